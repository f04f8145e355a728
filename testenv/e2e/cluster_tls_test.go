package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// TestClusterTLS: etcd with TLS and client certificates required, as
// docs/cluster.md deploys it. Two nodes with --etcd-ca/--etcd-cert/
// --etcd-key share a change; a node without a client certificate cannot
// change anything ("store unreachable"); half a key pair is refused.
func TestClusterTLS(t *testing.T) {
	lab := newLab(t, netlab.LabOptions{Backends: 1, Nodes: 3})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	etcd, err := lab.StartEtcdTLS(ctx, 3, clusterEtcdAddr, 24)
	if err != nil {
		t.Fatal(err)
	}
	ends := strings.Join(etcd.Endpoints(), ",")
	if !strings.HasPrefix(ends, "https://") {
		t.Fatalf("endpoints %s", ends)
	}
	f := etcd.TLS
	args := func(name string, tlsArgs ...string) []string {
		return append([]string{"--store", "etcd", "--etcd-endpoints", ends, "--cluster", "tls", "--node-name", name}, tlsArgs...)
	}
	full := []string{"--etcd-ca", f.CA, "--etcd-cert", f.ClientCert, "--etcd-key", f.ClientKey}
	a := startDaemonOn(t, lab, lab.Nodes[0], "", args("n1", full...)...)
	b := startDaemonOn(t, lab, lab.Nodes[1], "", args("n2", full...)...)
	a.mustCLI(t, "vip", "add", vipTCP, "--forward", "ipip")
	b.waitStatus(t, "the VIP added on n1", func(st api.Status) bool { return len(st.VIPs) == 1 && st.VIPs[0].VIP == vipTCP })
	deadline := time.Now().Add(10 * time.Second)
	for len(clusterStatus(t, b).Nodes) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("cluster status over TLS: %+v", clusterStatus(t, b))
		}
		time.Sleep(20 * time.Millisecond)
	}

	c := startDaemonOn(t, lab, lab.Nodes[2], "", args("n3", "--etcd-ca", f.CA)...)
	out, err := c.cli(t, "vip", "add", vipUDP, "--forward", "ipip")
	if err == nil || !strings.Contains(out, "store unreachable") {
		t.Fatalf("a change through a node without a client certificate: %v\n%s", err, out)
	}
	t.Logf("without a client certificate: %s", strings.TrimSpace(out))
	if st := a.status(t); len(st.VIPs) != 1 {
		t.Fatalf("the refused change landed: %+v", st.VIPs)
	}

	cmd := lab.Nodes[2].Command(context.Background(), sluiceBin, daemonArgs(lab, lab.Nodes[2], t.TempDir(), args("n4", "--etcd-cert", f.ClientCert)...)...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--etcd-cert and --etcd-key") {
		t.Fatalf("--etcd-cert without --etcd-key: %v\n%s", err, out)
	}

	// TLS flags with a plain-text endpoint, or a mix of http and https:
	// refused, rather than plain text under flags that asked for TLS.
	plain := strings.ReplaceAll(ends, "https://", "http://")
	mixed := strings.Replace(ends, "https://", "http://", 1)
	for _, c := range []struct {
		ends, want string
	}{
		{plain, "plain http, but --etcd-ca/--etcd-cert/--etcd-key ask for TLS"},
		{mixed, "use https:// for every member"},
	} {
		a := append([]string{"--store", "etcd", "--etcd-endpoints", c.ends, "--cluster", "tls", "--node-name", "n5"}, full...)
		cmd := lab.Nodes[2].Command(context.Background(), sluiceBin, daemonArgs(lab, lab.Nodes[2], t.TempDir(), a...)...)
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), c.want) {
			t.Fatalf("%v: %v\n%s", c.ends, err, out)
		}
	}
}
