// CoreDNS as Basalt's cluster DNS runs it: CoreDNS's own server (coremain) with the plugins a
// cluster's Corefile uses or a user commonly adds, in CoreDNS's own chain order, rather than
// every plugin upstream's release links (cloud DNS providers, etcd, dnstap, ...: most of its
// size). A Corefile naming a plugin that is not here fails to load with CoreDNS's own error.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/acl"
	_ "github.com/coredns/coredns/plugin/any"
	_ "github.com/coredns/coredns/plugin/autopath"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/bufsize"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/file"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/header"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/k8s_external"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metadata"
	_ "github.com/coredns/coredns/plugin/minimal"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/nsid"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/template"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func init() {
	// The plugins above, in the order of CoreDNS's chain (its plugin.cfg).
	dnsserver.Directives = []string{
		"metadata", "reload", "nsid", "bufsize", "bind", "debug", "ready", "health",
		"prometheus", "errors", "log", "any", "loadbalance", "rewrite", "autopath", "acl",
		"cache", "header", "minimal", "template", "hosts", "k8s_external", "kubernetes",
		"file", "loop", "forward", "whoami",
	}
}

func main() {
	coremain.Run()
}
