package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// slowHook writes a promotion hook that takes an exclusive lock for 6 s
// and logs "start EPOCH NODE" and "end EPOCH NODE" around it, or
// "OVERLAP EPOCH NODE" when another hook holds the lock. The lock goes
// with the hook's process group, killed or not, so an overlap cannot
// hide.
func slowHook(t testing.TB) (script, log string) {
	dir := t.TempDir()
	log, script = filepath.Join(dir, "hook.log"), filepath.Join(dir, "hook.sh")
	lock := filepath.Join(dir, "hook.lock")
	body := fmt.Sprintf(`#!/bin/sh
exec 9>%[1]s
if ! flock -n 9; then echo "OVERLAP $SLUICE_EPOCH $SLUICE_NODE" >> %[2]s; exit 1; fi
echo "start $SLUICE_EPOCH $SLUICE_NODE" >> %[2]s
sleep 6
echo "end $SLUICE_EPOCH $SLUICE_NODE" >> %[2]s
`, lock, log)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, log
}

// TestClusterHooksNeverOverlap: the failover VIP's primary fails and the
// coordinator starts its 6 s promotion hook; as it starts, the
// coordinator is cut off from etcd (nftables). Its hook is stopped
// before its lease can expire in etcd (it renews with a margin, and
// checks the election in etcd right before a hook), so the node elected
// next runs its hook alone: no two hooks overlap, and epochs only grow.
// On the old code the cut-off coordinator's hook ran on for seconds
// after another node was elected and started its own.
func TestClusterHooksNeverOverlap(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	script, log := slowHook(t)
	a := lc.nodes[0]
	a.mustCLI(t, "vip", "add", vipFail, "--forward", "ipip", "--policy", "failover", "--promote-cmd", script, "--hook-timeout", "20s")
	for i, b := range lc.lab.Backends {
		a.mustCLI(t, append([]string{"backend", "add", vipFail, b.Addr.Addr().String(), "--priority", fmt.Sprint(30 - 10*i)}, fastCheck...)...)
	}
	waitLog := func(what string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for !strings.Contains(strings.Join(hookCalls(t, log), "\n"), what) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the hook log within %v: %q", what, within, hookCalls(t, log))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLog("end 1 ", 20*time.Second) // the first primary's hook
	c := lc.coordinatorIndex(t, 0)
	cutName := fmt.Sprintf("n%d", c+1)
	lc.lab.Backends[0].StopServers(true)
	waitLog("start 2 "+cutName, 10*time.Second)
	host := lc.lab.Nodes[c]
	nft(t, host, "add", "table", "inet", "sluicet")
	nft(t, host, "add", "chain", "inet", "sluicet", "out", "{ type filter hook output priority 0 ; }")
	nft(t, host, "add", "rule", "inet", "sluicet", "out", "tcp", "dport", "2379", "drop")
	cut := time.Now()
	waitLog("end 3 ", 30*time.Second) // the next coordinator's hook, alone
	nft(t, host, "delete", "table", "inet", "sluicet")
	calls := hookCalls(t, log)
	t.Logf("hook log, node %s cut from etcd at %s as its hook began:\n%s", cutName, cut.Format("15:04:05.000"), strings.Join(calls, "\n"))
	last := uint64(0)
	for _, l := range calls {
		f := strings.Fields(l)
		if f[0] == "OVERLAP" {
			t.Errorf("two hooks overlapped: %q", l)
		}
		if f[0] != "start" {
			continue
		}
		e, _ := strconv.ParseUint(f[1], 10, 64)
		if e <= last {
			t.Errorf("epoch %d started after %d", e, last)
		}
		last = e
	}
	for _, l := range calls {
		if l == "end 2 "+cutName {
			t.Errorf("the cut-off coordinator's hook ran to its end: %q", calls)
		}
	}
}
