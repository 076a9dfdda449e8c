//! `hello`: the node's binary in the test container image (`basalt.local/hello:v1`). It prints
//! a greeting, its arguments and what it sees of its own namespaces, so a test can tell it ran
//! inside a container: PID 1 of a new PID namespace, in the container's root.
//!
//! The image build compiles it statically and puts it in the test image it ships; nothing on
//! the node runs it outside a container.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

#[allow(clippy::print_stdout)]
fn run(args: &[String]) -> ! {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("hello from a Basalt container");
    println!("args: {}", args.join(" "));
    println!("pid: {}", std::process::id());
    println!("hostname: {host}");
    println!(
        "root has: {}",
        std::fs::read_dir("/")
            .map(|d| {
                let mut v: Vec<String> = d
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v.join(" ")
            })
            .unwrap_or_default()
    );
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // `--serve PORT`: answer every TCP connection with a line naming this host, forever (a
    // pod another pod can reach).
    if let Some(port) = value("--serve") {
        serve(&port, &host);
    }
    // `--fetch HOST:PORT`: print what a `--serve` answers (retrying for 60 s); exit 1 if never.
    // HOST is an address or a name the container's resolver looks up.
    if let Some(addr) = value("--fetch") {
        std::process::exit(fetch(&addr));
    }
    // `--write PATH TEXT`: write TEXT to PATH (a volume), then exit.
    if let Some(path) = value("--write") {
        let text = args
            .iter()
            .position(|a| a == "--write")
            .and_then(|i| args.get(i + 2))
            .cloned()
            .unwrap_or_default();
        match std::fs::write(&path, text) {
            Ok(()) => println!("wrote {path}"),
            Err(e) => {
                println!("cannot write {path}: {e}");
                std::process::exit(1)
            }
        }
        std::process::exit(0)
    }
    // `--cat PATH`: print what PATH holds, then exit.
    if let Some(path) = value("--cat") {
        match std::fs::read_to_string(&path) {
            Ok(t) => println!("{path} holds: {t}"),
            Err(e) => {
                println!("cannot read {path}: {e}");
                std::process::exit(1)
            }
        }
        std::process::exit(0)
    }
    let code = value("--exit").and_then(|c| c.parse().ok()).unwrap_or(0);
    std::process::exit(code)
}

#[allow(clippy::print_stdout)]
fn serve(port: &str, host: &str) -> ! {
    use std::io::Write as _;
    let listener = match std::net::TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            println!("cannot listen on {port}: {e}");
            std::process::exit(1)
        }
    };
    println!("serving on {port}");
    loop {
        if let Ok((mut s, peer)) = listener.accept() {
            let _ = writeln!(s, "hello from {host}");
            println!("answered {peer}");
        }
    }
}

#[allow(clippy::print_stdout)]
fn fetch(addr: &str) -> i32 {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    if addr
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        println!("{addr} is not HOST:PORT");
        return 2;
    }
    let each = std::time::Duration::from_secs(3);
    loop {
        // A name is looked up on every try (the system resolver: /etc/resolv.conf, its search
        // domains), so a DNS server that answers late is waited for like a route.
        let to = std::net::ToSocketAddrs::to_socket_addrs(addr).and_then(|mut a| {
            a.next()
                .ok_or_else(|| std::io::Error::other("the name has no address"))
        });
        if let Ok(a) = &to
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            println!("{addr} is {}", a.ip());
        }
        // Each try is short: a SYN lost while a route is still being set up would otherwise
        // hold one connect for the kernel's two minutes of retries.
        let got = to
            .and_then(|to| std::net::TcpStream::connect_timeout(&to, each))
            .and_then(|mut s| {
                s.set_read_timeout(Some(each))?;
                let mut text = String::new();
                s.read_to_string(&mut text).map(|_| text)
            });
        match got {
            Ok(text) => {
                println!("{addr} says: {}", text.trim());
                return 0;
            }
            Err(e) if std::time::Instant::now() > deadline => {
                println!("cannot reach {addr}: {e}");
                return 1;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
    }
}
