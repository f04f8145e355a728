package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

// TestClusterBackupRestore: `sluice backup save` on a cluster node, then
// `backup restore` through a node of a fresh etcd cluster (the three
// nodes moved onto it, with their state directories, keep forwarding
// what they applied until then): one transaction, and every node ends
// with the state that was saved and equal rings.
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
		lc.restart(t, i)
	}
	// An empty cluster does not wipe what the nodes forward.
	for i, n := range lc.nodes {
		if got := vipsOf(t, n); got != want {
			t.Fatalf("node %d on the empty etcd cluster holds\n%s\nwant what it applied before\n%s", i, got, want)
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
