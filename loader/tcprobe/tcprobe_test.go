package tcprobe

import (
	"errors"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestMark: a mark holds the backend index under sluice's tag, and only
// backend indices are marks.
func TestMark(t *testing.T) {
	m, err := Mark(4095)
	if err != nil || m != 0x51ce0fff {
		t.Fatalf("Mark(4095) = %#x, %v; want 0x51ce0fff", m, err)
	}
	if idx, ok := Backend(m); !ok || idx != 4095 {
		t.Fatalf("Backend(%#x) = %d, %v", m, idx, ok)
	}
	if _, ok := Backend(0x12340001); ok {
		t.Fatal("another tag read as a probe mark")
	}
	for _, idx := range []uint32{0, 1 << 16} {
		if _, err := Mark(idx); err == nil {
			t.Errorf("Mark(%d) = nil error", idx)
		}
	}
}

// TestAttachEachWay: tc_probe's attachment, by tcx and by the clsact
// fallback of kernels before 6.6, sits on the interface's egress while
// held and is gone once closed; a filter left by a killed daemon is
// replaced, not doubled.
func TestAttachEachWay(t *testing.T) {
	testutil.Require(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	inNetns(t, func(ifi *net.Interface) {
		for _, clsact := range []bool{false, true} {
			c, err := attach(prog, ifi, clsact)
			if err != nil {
				t.Fatalf("clsact %v: %v", clsact, err)
			}
			if clsact {
				again, err := attach(prog, ifi, true)
				if err != nil {
					t.Fatal(err)
				}
				if n := egressFilters(t, ifi); n != 1 {
					t.Fatalf("attached twice by clsact: %d filters, want 1", n)
				}
				c = again
			} else if n := tcxPrograms(t, ifi); n != 1 || egressFilters(t, ifi) != 0 {
				t.Fatalf("tcx: %d programs (want 1), %d cls_bpf filters (want 0)", n, egressFilters(t, ifi))
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if n, m := egressFilters(t, ifi), tcxPrograms(t, ifi); n != 0 || m != 0 {
				t.Fatalf("clsact %v: %d filters and %d tcx programs left after Close", clsact, n, m)
			}
		}
	})
}

func tcxPrograms(t *testing.T, ifi *net.Interface) int {
	t.Helper()
	r, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		t.Fatal(err)
	}
	return len(r.Programs)
}

func egressFilters(t *testing.T, ifi *net.Interface) int {
	t.Helper()
	l, err := netlink.LinkByIndex(ifi.Index)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_EGRESS)
	if err != nil && !errors.Is(err, unix.EINVAL) { // no clsact qdisc yet
		t.Fatal(err)
	}
	n := 0
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == filterName {
			n++
		}
	}
	return n
}

// inNetns runs fn on a veth in a namespace of its own.
func inNetns(t *testing.T, fn func(*net.Interface)) {
	testutil.InNewNetns(t, func() {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sluicet-p0"}, PeerName: "sluicet-p1"}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Fatal(err)
		}
		ifi, err := net.InterfaceByName("sluicet-p0")
		if err != nil {
			t.Fatal(err)
		}
		fn(ifi)
	})
}
