package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// ipNetnsExec runs sluice through `ip netns exec`, which gives it a mount
// namespace of its own.
func ipNetnsExec(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, sluiceBin}, args...)...)
}

// TestIPNetnsExecDecap: `ip netns exec NS sluice decap attach` pins into
// the host's bpffs, so the decapsulator is still attached after the
// command exits, and `decap detach` the same way removes it.
func TestIPNetnsExecDecap(t *testing.T) {
	lab := newLab(t, netlab.LabOptions{Backends: 1})
	h := lab.Client // an interface with no program of its own yet
	out, err := ipNetnsExec(h.NSName(), "decap", "attach", "--iface", h.Link, "--pin-root", lab.PinRoot()).CombinedOutput()
	if err != nil {
		t.Fatalf("decap attach: %v\n%s", err, out)
	}
	show, err := h.Command(context.Background(), "ip", "-d", "link", "show", h.Link).CombinedOutput()
	if err != nil || !strings.Contains(string(show), "prog/xdp") {
		t.Fatalf("after `ip netns exec ... decap attach` exited, %s has no XDP program:\n%s", h.Link, show)
	}
	var pinned []string
	filepath.WalkDir(filepath.Join(lab.PinRoot(), "decap"), func(p string, e os.DirEntry, err error) error {
		if err == nil && e.Name() == "link" && strings.HasPrefix(filepath.Base(filepath.Dir(p)), h.Link+"-") {
			pinned = append(pinned, p)
		}
		return nil
	})
	if len(pinned) != 1 {
		t.Fatalf("pinned links of %s in the host's bpffs: %v, want one", h.Link, pinned)
	}
	if out, err := ipNetnsExec(h.NSName(), "decap", "detach", "--iface", h.Link, "--pin-root", lab.PinRoot()).CombinedOutput(); err != nil {
		t.Fatalf("decap detach: %v\n%s", err, out)
	}
	show, _ = h.Command(context.Background(), "ip", "-d", "link", "show", h.Link).CombinedOutput()
	if strings.Contains(string(show), "prog/xdp") {
		t.Fatalf("still attached after detach:\n%s", show)
	}
}

// TestIPNetnsExecDaemon: a daemon started with `ip netns exec`, killed
// with -9 and started again the same way, adopts its data plane (pinned in
// the host's bpffs) with no map written, and no request fails.
func TestIPNetnsExecDaemon(t *testing.T) {
	lab := newLab(t, netlab.LabOptions{Backends: 2})
	dir := t.TempDir()
	start := func() *daemonProc {
		return startDaemonCmd(t, ipNetnsExec(lab.LB.NSName(), daemonArgs(lab, lab.LB, dir)...), dir)
	}
	d := start()
	d.mustCLI(t, "vip", "add", vipTCP)
	for _, b := range lab.Backends {
		d.mustCLI(t, append([]string{"backend", "add", vipTCP, b.Addr.Addr().String()}, fastCheck...)...)
	}
	d.waitStatus(t, "all up", allUp(2))
	l := startLoad(t, lab)
	l.waitMore(t, 100)
	d.kill9(t)
	l.waitMore(t, 200) // forwarding with no daemon: the pins outlived it
	d2 := start()
	d2.waitStatus(t, "all up after restart", allUp(2))
	l.waitMore(t, 100)
	l.finish()
	evs := d2.mustCLI(t, "events")
	if !strings.Contains(evs, "adopted=true, map writes=0") {
		t.Fatalf("restart under ip netns exec did not adopt:\n%s", evs)
	}
	if l.failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across kill -9 and restart", l.failed.Load(), l.ok.Load()+l.failed.Load())
	}
	t.Logf("%d requests, 0 failed; %s", l.ok.Load(), firstLine(evs, "daemon started"))
}

func firstLine(s, with string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, with) {
			return line
		}
	}
	return ""
}
