package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterDiskFull: node 1's --state-dir is a small tmpfs, filled up.
// Changes through node 1 commit in etcd and are applied on every node,
// node 1 included (its rings equal the others'), though node 1 cannot
// keep them in its bbolt file; it says so, and keeps the newest state
// once the disk has room: restarted with etcd gone, it forwards it. On
// the old code the CLI got the disk's error for a change that had
// committed, and node 1 never applied it.
func TestClusterDiskFull(t *testing.T) {
	lc := newLabCluster(t, 3, 3)
	a := lc.nodes[0]
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	a.stop()
	if out, err := exec.Command("cp", "-a", a.stateDir+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	a = startDaemonOn(t, lc.lab, lc.lab.Nodes[0], dir, lc.args[0]...)
	lc.nodes[0] = a
	lc.waitSameRings(t, 20*time.Second)
	fill := filepath.Join(dir, "fill")
	exec.Command("dd", "if=/dev/zero", "of="+fill, "bs=4k").Run() // until ENOSPC
	const vip = "10.77.1.105:80/tcp"
	a.mustCLI(t, "vip", "add", vip, "--forward", "ipip")
	for i := range 40 {
		a.mustCLI(t, "backend", "add", vip, fmt.Sprintf("10.77.5.%d", i+1), "--check", "none", "--weight", fmt.Sprint(i+1))
	}
	lc.waitSameRings(t, 10*time.Second)
	if !strings.Contains(a.logText(), "cannot keep the state in --state-dir") {
		t.Fatalf("the full disk never refused node 1's bbolt file a write, so this tested nothing:\n%s", a.logText())
	}
	want := vipsOf(t, lc.nodes[1])
	if got := vipsOf(t, a); got != want {
		t.Fatal("node 1 applied another state than node 2")
	}
	t.Log("41 changes through node 1 with its disk full: each committed and applied on every node; node 1 said its file lags")

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.logText(), "kept the state in --state-dir") {
		if time.Now().After(deadline) {
			t.Fatalf("node 1 did not keep its state within 10 s of the disk having room:\n%s", a.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Restarted with etcd gone, node 1 forwards from its file: the
	// newest state.
	a.stop()
	for _, m := range lc.etcd.Members {
		if err := m.Kill(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	lc.restart(t, 0)
	if got := vipsOf(t, lc.nodes[0]); got != want {
		t.Fatalf("node 1, restarted without etcd, forwards\n%s\nwant the newest state\n%s", got, want)
	}
}
