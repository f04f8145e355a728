package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// TestClusterBackupRestore: `sluice backup save` on a cluster node; the
// three nodes move onto a fresh etcd cluster with their state
// directories: a node that forwards VIPs refuses to join the empty
// cluster (and so with a typo in --cluster) unless started with
// --cluster-init, which seeds it with what the node forwards, and the
// others join that. Then `backup restore` through a node: one
// transaction, and every node ends with the state that was saved and
// equal rings.
func TestClusterBackupRestore(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	a := lc.nodes[0]
	b2 := lc.lab.Backends[1].Addr.Addr().String()
	a.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip", "--ring-size", "4099")
	a.mustCLI(t, "backend", "add", vipHTTP, b2, "--weight", "3", "--check", "none")
	lc.nodes[1].mustCLI(t, "backend", "drain", vipTCP, b2)
	lc.waitSameRings(t, 10*time.Second)
	saved := lc.nodes[2].status(t).Revision
	file := filepath.Join(t.TempDir(), "cluster.json")
	lc.nodes[2].mustCLI(t, "backup", "save", file)
	want := vipsOf(t, a)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fresh, err := lc.lab.StartEtcd(ctx, 3, netip.MustParseAddr("10.77.0.41"), 24)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range lc.nodes {
		n.stop()
		for j, arg := range lc.args[i] {
			if arg == "--etcd-endpoints" {
				lc.args[i][j+1] = strings.Join(fresh.Endpoints(), ",")
			}
		}
	}
	// An empty cluster does not wipe what a node forwards: it refuses to
	// join, and says how to seed it.
	typo := slices.Clone(lc.args[1])
	for j, arg := range typo {
		switch arg {
		case "--etcd-endpoints":
			typo[j+1] = strings.Join(lc.etcd.Endpoints(), ",") // the first etcd, which holds cluster "lab"
		case "--cluster":
			typo[j+1] = "lba"
		}
	}
	for _, c := range []struct {
		what string
		args []string
	}{
		{"the fresh etcd cluster", lc.args[1]},
		{"a typo in --cluster (on the first etcd)", typo},
	} {
		out, err := runToExit(t, lc.lab, lc.lab.Nodes[1], lc.nodes[1].stateDir, c.args...)
		if err == nil || !strings.Contains(out, "refusing to join an empty cluster") || !strings.Contains(out, "--cluster-init") {
			t.Fatalf("a node forwarding %d bytes of VIPs started on %s: %v\n%s", len(want), c.what, err, out)
		}
		t.Logf("a node that forwards VIPs, started on %s, refuses: %s", c.what, lastLine(out))
	}
	// Seeded by one node (--cluster-init), joined by the others.
	lc.args[0] = append(lc.args[0], "--cluster-init")
	for i := range lc.nodes {
		lc.restart(t, i)
	}
	for i, n := range lc.nodes {
		if got := vipsOf(t, n); got != want {
			t.Fatalf("node %d on the etcd cluster seeded by node 1 holds\n%s\nwant what node 1 applied before\n%s", i, got, want)
		}
	}
	out := lc.nodes[1].mustCLI(t, "backup", "restore", file)
	t.Logf("restore on the fresh cluster: %s", strings.TrimSpace(out))
	lc.waitSameRings(t, 20*time.Second)
	st := lc.waitClusterStatus(t, "every node on the restored state")
	for i, n := range lc.nodes {
		if got := vipsOf(t, n); got != want {
			t.Errorf("node %d after the restore:\n%s\nsaved:\n%s", i, got, want)
		}
	}
	t.Logf("saved at revision %d of the first etcd cluster; restored as revision %d of the fresh one, identical on all three nodes", saved, st.Revision)
}

// runToExit runs `sluice daemon` on host with stateDir and extra flags,
// expecting it to exit (within 20 s), and returns what it printed.
func runToExit(t testing.TB, lab *netlab.Lab, host *netlab.Host, stateDir string, extra ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := host.Command(ctx, sluiceBin, daemonArgs(lab, host, stateDir, extra...)...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("the daemon did not exit in 20 s:\n%s", out)
	}
	return string(out), err
}

// lastLine is the last non-empty line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// vipsOf is d's desired state without its revision, as JSON.
func vipsOf(t testing.TB, d *daemonProc) string {
	t.Helper()
	var s state.State
	if err := api.NewClient(d.socket).Do(context.Background(), "GET", "/v1/state", nil, nil, &s); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s.VIPs)
	return string(b)
}
