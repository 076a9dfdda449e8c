//! `basalt-discovery`: the open discovery server KubeSpan's nodes meet through. It stores only
//! sealed records; see docs/kubespan.md for what it can and cannot see.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(basalt_discovery::cli::run(&args));
}
