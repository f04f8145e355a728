package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/control/api"
)

// TestLBPairPromotion: a backup never runs a promotion hook; after a
// takeover the new master promotes, with a higher epoch.
func TestLBPairPromotion(t *testing.T) {
	lp := newLBPair(t, "100ms", 2, 2)
	dir := t.TempDir()
	log := filepath.Join(dir, "hook.log")
	script := filepath.Join(dir, "hook.sh")
	body := "#!/bin/sh\necho \"$SLUICE_NODE $SLUICE_NEW_PRIMARY $SLUICE_EPOCH\" >> " + log + "\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	const vip = "10.77.1.100:80/tcp"
	m := lp.nodes[0]
	m.mustCLI(t, "vip", "add", vip, "--policy", "failover", "--promote-cmd", script)
	for i, b := range lp.lab.Backends {
		m.mustCLI(t, append([]string{"backend", "add", vip, b.Addr.Addr().String(), "--priority", fmt.Sprint(30 - 10*i)}, fastCheck...)...)
	}
	epochOf := func(d *daemonProc) (string, uint64) {
		for _, v := range d.status(t).VIPs {
			if v.VIP == vip {
				return v.Primary, v.Epoch
			}
		}
		return "", 0
	}
	var e0 uint64
	for _, n := range lp.nodes {
		n.waitStatus(t, "b1 primary on both nodes", func(st api.Status) bool {
			for _, v := range st.VIPs {
				if v.VIP == vip && v.Primary == "10.77.0.11" {
					return true
				}
			}
			return false
		})
	}
	_, e0 = epochOf(lp.nodes[1])
	calls := hookCalls(t, log)
	for _, c := range calls {
		if !strings.HasPrefix(c, "10.77.0.2 ") {
			t.Fatalf("hook run by a node other than the master: %q", c)
		}
	}
	// The master's link goes down: node 1 takes over. Then b1 dies: only
	// node 1 (master) may promote; node 0 (backup, in fault, whose checks
	// all fail) must not.
	if err := lp.hosts[0].SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitRole(t, lp.nodes[1], "master")
	lp.lab.Backends[0].StopServers(true)
	lp.nodes[1].waitStatus(t, "b2 promoted by the new master", func(st api.Status) bool {
		for _, v := range st.VIPs {
			if v.VIP == vip && v.Primary == "10.77.0.12" {
				return true
			}
		}
		return false
	})
	_, e1 := epochOf(lp.nodes[1])
	after := hookCalls(t, log)[len(calls):]
	t.Logf("hook calls before takeover %q, after %q; epoch %d -> %d", calls, after, e0, e1)
	if len(after) != 1 || after[0] != fmt.Sprintf("10.77.0.3 10.77.0.12 %d", e1) {
		t.Fatalf("after takeover the hook ran %q, want once on node 1 for b2 with epoch %d", after, e1)
	}
	if e1 <= e0 {
		t.Fatalf("epoch %d after takeover, not above %d", e1, e0)
	}
	// Node 0 returns as backup, gets the new epoch, and runs no hook.
	if err := lp.hosts[0].SetLinkUp(true); err != nil {
		t.Fatal(err)
	}
	lp.waitRoles(t, 1)
	if p, e := epochOf(lp.nodes[0]); p != "10.77.0.12" || e != e1 {
		t.Fatalf("backup has primary %s epoch %d, want 10.77.0.12 epoch %d", p, e, e1)
	}
	if got := hookCalls(t, log); len(got) != len(calls)+1 {
		t.Fatalf("extra hook calls: %q", got[len(calls)+1:])
	}
	if out, err := lp.nodes[0].cli(t, "promote", vip, "10.77.0.13"); err == nil || !strings.Contains(out, "backup") {
		t.Fatalf("a promote on the backup was not refused: %v %s", err, out)
	}
}
