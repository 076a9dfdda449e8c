// Kubernetes' node and control-plane programs as Basalt ships them: one multi-call program
// that runs kubelet, kube-apiserver, kube-controller-manager, kube-scheduler or kube-proxy by
// the name it is run as (the node image links each name to it), each through its own command
// constructor from the k8s.io/kubernetes module, exactly as that command's own main does. The
// five programs share most of their code: linked once, the rootfs carries one copy of it and a
// node keeps one copy in its page cache.
//
// `kube NAME ARGS...` runs NAME as well, for use without the links.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	// What the programs' own mains import for their side effects.
	_ "time/tzdata" // time zones for CronJobs (kube-apiserver, kube-controller-manager)

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// The programs, by name; each runs as its own main would.
var programs = map[string]func() int{
	"kubelet":        func() int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"kube-apiserver": func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kube-proxy":     func() int { return cli.Run(proxy.NewProxyCommand()) },
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := programs[name]; !ok && len(os.Args) > 1 {
		// `kube NAME ARGS...`: NAME's command reads the arguments after it.
		name = os.Args[1]
		os.Args = os.Args[1:]
	}
	run, ok := programs[name]
	if !ok {
		names := make([]string, 0, len(programs))
		for n := range programs {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "%s: run as one of %s (a link to this program named so), or as `%s NAME ARGS...`\n",
			filepath.Base(os.Args[0]), strings.Join(names, ", "), filepath.Base(os.Args[0]))
		os.Exit(2)
	}
	os.Exit(run())
}
