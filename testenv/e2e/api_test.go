package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestChangeOutlivesItsClient: a client that sends `backend add` and goes
// away at once (Ctrl-C) leaves the change committed and fully applied.
// The backend needs its MAC resolved (its neighbour entry is flushed) and
// has no health check, so nothing but this change applies it.
func TestChangeOutlivesItsClient(t *testing.T) {
	lab, d := labWithDaemon(t, 1)
	d.mustCLI(t, "vip", "add", vipTCP, "--forward", "dsr")
	before := d.status(t).Revision
	if out, err := lab.LB.Command(context.Background(), "ip", "neigh", "flush", "all").CombinedOutput(); err != nil {
		t.Fatalf("ip neigh flush: %v %s", err, out)
	}
	addr := lab.Backends[0].Addr.Addr().String()
	body, _ := json.Marshal(api.BackendAddRequest{VIP: vipTCP, Backend: state.Backend{Addr: addr, Weight: 1, Check: state.Check{Type: "none"}}})
	c, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "POST /v1/backends HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	c.Close() // gone before the daemon answers
	d.waitStatus(t, "the backend committed", func(s api.Status) bool { return s.Revision == before+1 })
	st := d.waitStatus(t, "the backend usable (its MAC resolved)", func(s api.Status) bool {
		b := backendState(s, vipTCP, addr)
		return b.Usable && b.RingSlots > 0
	})
	if b := backendState(st, vipTCP, addr); b.Reason != "no health check" {
		t.Fatalf("backend reason %q", b.Reason)
	}
}

// TestSocketNeverLoose: the API socket never exists with looser
// permissions than 0600, even for a moment: it is not bound in its
// directory (where it would have the umask's mode until a chmod) but
// moved there, already 0600.
func TestSocketNeverLoose(t *testing.T) {
	testutil.Require(t)
	lab := newLab(t, netlab.LabOptions{Backends: 1})
	dir := t.TempDir()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	old := unix.Umask(0) // the loosest umask the daemon could inherit
	d := startDaemon(t, lab, dir)
	unix.Umask(old)
	fi, err := os.Stat(d.socket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v %v, want a socket of mode 0600", d.socket, fi.Mode(), err)
	}
	buf := make([]byte, 64<<10)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read inotify events: %v", err)
	}
	moved := false
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
		off += unix.SizeofInotifyEvent + int(ev.Len)
		if name != filepath.Base(d.socket) {
			continue
		}
		if ev.Mask&unix.IN_CREATE != 0 {
			t.Fatalf("the socket was bound in place: between bind and chmod it had the umask's mode")
		}
		moved = moved || ev.Mask&unix.IN_MOVED_TO != 0
	}
	if !moved {
		t.Fatal("no event for the socket: the watch saw nothing")
	}
}
