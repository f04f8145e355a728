package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// labCluster is a lab with three sluice nodes on a real three-member etcd
// cluster (Debian's etcd-server).
type labCluster struct {
	lab   *netlab.Lab
	etcd  *netlab.EtcdCluster
	nodes []*daemonProc
	args  [][]string
}

// clusterEtcdAddr is the first etcd member's lab address.
var clusterEtcdAddr = netip.MustParseAddr("10.77.0.31")

// newLabCluster starts etcd, three nodes (n1–n3 on lb, lb2, lb3) with
// extra flags, and VIPs vipTCP and vipUDP on the first active of
// backends, and waits until all three nodes build the same rings.
func newLabCluster(t testing.TB, backends, active int, extra ...string) *labCluster {
	t.Helper()
	return newLabClusterOn(t, netlab.LabOptions{Backends: backends, Nodes: 3}, active, extra...)
}

// newLabClusterOn is newLabCluster on a lab built with opts.
func newLabClusterOn(t testing.TB, opts netlab.LabOptions, active int, extra ...string) *labCluster {
	t.Helper()
	return newLabClusterChecked(t, opts, active, fastCheck, extra...)
}

// newLabClusterChecked is newLabClusterOn with the backends' checks given
// by check (health-check flags of `backend add`).
func newLabClusterChecked(t testing.TB, opts netlab.LabOptions, active int, check []string, extra ...string) *labCluster {
	t.Helper()
	lab := newLab(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	etcd, err := lab.StartEtcd(ctx, 3, clusterEtcdAddr, 24)
	if err != nil {
		t.Fatal(err)
	}
	lc := &labCluster{lab: lab, etcd: etcd}
	for i, h := range lab.Nodes {
		args := append([]string{"--store", "etcd", "--etcd-endpoints", strings.Join(etcd.Endpoints(), ","),
			"--cluster", "lab", "--node-name", "n" + string(rune('1'+i))}, extra...)
		lc.args = append(lc.args, args)
		lc.nodes = append(lc.nodes, startDaemonOn(t, lab, h, "", args...))
	}
	a := lc.nodes[0]
	a.mustCLI(t, "vip", "add", vipTCP, "--forward", "ipip")
	a.mustCLI(t, "vip", "add", vipUDP, "--forward", "ipip")
	for _, b := range lab.Backends[:active] {
		a.mustCLI(t, append([]string{"backend", "add", vipTCP, b.Addr.Addr().String()}, check...)...)
		a.mustCLI(t, append([]string{"backend", "add", vipUDP, b.Addr.Addr().String(), "--check-port", "7"}, check...)...)
	}
	for _, n := range lc.nodes {
		n.waitStatus(t, "all backends up on every node", allUp(2*active))
	}
	lc.waitSameRings(t, 20*time.Second)
	return lc
}

// restart starts node i again on its state directory.
func (lc *labCluster) restart(t testing.TB, i int) {
	t.Helper()
	lc.nodes[i] = startDaemonOn(t, lc.lab, lc.lab.Nodes[i], lc.nodes[i].stateDir, lc.args[i]...)
}

// rings is a node's ring digest per VIP, read back from its kernel maps,
// with the revision it applied.
func rings(t testing.TB, d *daemonProc) (uint64, map[string]string) {
	t.Helper()
	rev, out, err := readRings(d)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	return rev, out
}

// readRings is rings for goroutines: it returns the status error.
func readRings(d *daemonProc) (uint64, map[string]string, error) {
	var st api.Status
	if err := api.NewClient(d.socket).Do(context.Background(), "GET", "/v1/status", nil, nil, &st); err != nil {
		return 0, nil, err
	}
	out := map[string]string{}
	for _, v := range st.VIPs {
		out[v.VIP] = v.RingSHA256
	}
	return st.Revision, out, nil
}

// waitSameRings waits until every node applied the same revision and
// holds byte-identical rings for every VIP.
func (lc *labCluster) waitSameRings(t testing.TB, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var first map[string]string
		var rev uint64
		same := true
		for i, n := range lc.nodes {
			r, rs := rings(t, n)
			if i == 0 {
				first, rev = rs, r
				continue
			}
			if r != rev || !equalMaps(rs, first) {
				same = false
			}
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			var got []string
			for _, n := range lc.nodes {
				r, rs := rings(t, n)
				b, _ := json.Marshal(rs)
				got = append(got, string(b)+" @"+strconv.FormatUint(r, 10))
			}
			t.Fatalf("rings differ after %v:\n%s", within, strings.Join(got, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// clusterStatus is `sluice cluster status -o json` on node d.
func clusterStatus(t testing.TB, d *daemonProc) api.ClusterStatus {
	t.Helper()
	var st api.ClusterStatus
	if err := json.Unmarshal([]byte(d.mustCLI(t, "cluster", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitClusterStatus waits until `cluster status` on every node lists the
// three nodes, one coordinator, and equal applied revisions and digests.
func (lc *labCluster) waitClusterStatus(t testing.TB, what string) api.ClusterStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st api.ClusterStatus
		ok := true
		for _, n := range lc.nodes {
			st = clusterStatus(t, n)
			ok = ok && len(st.Nodes) == len(lc.nodes) && st.Coordinator != "" && st.StoreUp
			for _, r := range st.Nodes {
				ok = ok && r.AppliedRevision == st.Revision && equalMaps(r.RingSHA256, st.Nodes[0].RingSHA256)
			}
		}
		if ok {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
