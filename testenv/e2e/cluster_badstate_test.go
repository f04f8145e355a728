package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

// TestClusterRefusesBadState: values put into etcd around sluice (as
// with etcdctl): a VIP with ring_size 4, then a value that is not JSON.
// Every node refuses each, says why (cluster status, the metric), keeps
// its rings and forwards on the last good state (wrk: 0 failed); a node
// killed and started meanwhile starts and forwards too. Then a VIP value
// with a field of a newer version: every node applies it, and the field
// survives a change made through a node. On the old code the watch
// skipped the bad VIP's validation and the non-JSON value stalled it,
// and the restarted node refused to start.
func TestClusterRefusesBadState(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	a := lc.nodes[0]
	a.mustCLI(t, "vip", "add", vipHTTP, "--forward", "ipip")
	for _, be := range lc.lab.Backends {
		a.mustCLI(t, append([]string{"backend", "add", vipHTTP, be.Addr.Addr().String()}, fastCheck...)...)
	}
	lc.waitSameRings(t, 20*time.Second)
	cli, err := lc.etcd.Client(lc.lab.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	key := "/sluice/lab/state/vips/" + vipTCP
	get, err := cli.Get(ctx, key)
	if err != nil || len(get.Kvs) != 1 {
		t.Fatalf("get %s: %v", key, err)
	}
	var vip map[string]any
	if err := json.Unmarshal(get.Kvs[0].Value, &vip); err != nil {
		t.Fatal(err)
	}
	with := func(k string, v any) string {
		m := map[string]any{}
		for kk, vv := range vip {
			m[kk] = vv
		}
		m[k] = v
		b, _ := json.Marshal(m)
		return string(b)
	}
	_, before := rings(t, a)
	wrkDone := make(chan [2]int, 1)
	go func() {
		r, f, err := wrkRun(lc, 12*time.Second)
		if err != nil {
			t.Error(err)
		}
		wrkDone <- [2]int{r, f}
	}()
	for i, bad := range []struct{ what, value, why string }{
		{"a VIP with ring_size 4", with("ring_size", 4), "ring_size 4"},
		{"a value that is not JSON", "{not json", "not a vip's JSON"},
	} {
		if _, err := cli.Put(ctx, key, bad.value); err != nil {
			t.Fatal(err)
		}
		for n, d := range lc.nodes {
			st := lc.waitRefused(t, d, bad.why)
			if _, now := rings(t, d); !equalMaps(now, before) {
				t.Fatalf("%s: node %d's rings moved: %v, were %v", bad.what, n+1, now, before)
			}
			if i == 0 && n == 0 {
				t.Logf("%s: cluster status says: %s", bad.what, st.StateRefused)
			}
		}
		if v := newScraper(lc.lab.Nodes[1]).value(t, "sluice_cluster_state_refused"); v != 1 {
			t.Fatalf("%s: sluice_cluster_state_refused %v, want 1", bad.what, v)
		}
	}
	// A node restarted while etcd holds the bad value starts, and
	// forwards on its last good state.
	lc.nodes[2].kill9(t)
	lc.restart(t, 2)
	lc.waitRefused(t, lc.nodes[2], "not a vip's JSON")
	if _, now := rings(t, lc.nodes[2]); !equalMaps(now, before) {
		t.Fatalf("node 3 restarted over the bad value: rings %v, were %v", now, before)
	}
	if r := <-wrkDone; r[1] != 0 || r[0] == 0 {
		t.Fatalf("wrk while etcd held bad values: %d requests, %d failed", r[0], r[1])
	} else {
		t.Logf("wrk while etcd held bad values: %d requests, 0 failed", r[0])
	}

	// The next good value, with a newer version's field, is applied.
	if _, err := cli.Put(ctx, key, with("nat_pool", "10.9.0.0/24")); err != nil {
		t.Fatal(err)
	}
	lc.waitClusterStatus(t, "every node on the good value")
	for n, d := range lc.nodes {
		if st := clusterStatus(t, d); st.StateRefused != "" {
			t.Fatalf("node %d applied the good value, yet still says it refuses the state: %s", n+1, st.StateRefused)
		}
	}
	a.mustCLI(t, "backend", "drain", vipTCP, lc.lab.Backends[2].Addr.Addr().String())
	lc.waitSameRings(t, 10*time.Second)
	get, err = cli.Get(ctx, key)
	if err != nil || len(get.Kvs) != 1 || !strings.Contains(string(get.Kvs[0].Value), `"nat_pool":"10.9.0.0/24"`) {
		t.Fatalf("a newer version's field did not survive a change to its VIP: %s (%v)", get.Kvs[0].Value, err)
	}
}

// waitRefused waits until node d's cluster status says the newest state
// in etcd is refused, naming why.
func (lc *labCluster) waitRefused(t testing.TB, d *daemonProc, why string) api.ClusterStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := clusterStatus(t, d)
		if strings.Contains(st.StateRefused, why) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: the bad state not refused with %q within 10 s: %+v", d.socket, why, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
