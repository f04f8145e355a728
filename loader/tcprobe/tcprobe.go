// Package tcprobe attaches the data plane's tc_probe program, which
// sends health probes through the forwarding path (check via vip), and
// makes the socket marks it reads.
package tcprobe

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

// Marks: a socket marked Mark(idx) has its packets sent by tc_probe to
// backend idx, as the data plane sends its VIP's traffic there.
const (
	tag      = uint32(bpf.LbSluiceProbeSLUICE_PROBE_TAG)
	tagShift = uint32(bpf.LbSluiceProbeSLUICE_PROBE_TAG_SHIFT)
	maxIndex = 1<<tagShift - 1
)

// Mark is the SO_MARK that sends a probe to backend index idx.
func Mark(idx uint32) (uint32, error) {
	if idx == 0 || idx > maxIndex {
		return 0, fmt.Errorf("probe mark: backend index %d out of 1..%d", idx, maxIndex)
	}
	return tag<<tagShift | idx, nil
}

// Backend reads the backend index back from a probe mark.
func Backend(mark uint32) (uint32, bool) {
	if mark>>tagShift != tag {
		return 0, false
	}
	return mark & maxIndex, true
}

// Attach attaches prog (loader.Datapath.ProbeProgram) to the egress of
// the data plane's interface iface and of loopback (a probe to a VIP that
// is a local address leaves through loopback, and tc_probe sends it out
// of iface). Closing the result detaches both; nothing is pinned, so
// probes stop with the process that marks them. It uses tcx (Linux 6.6),
// else a clsact qdisc's cls_bpf filter.
func Attach(prog *ebpf.Program, iface *net.Interface) (io.Closer, error) {
	if iface == nil {
		return nil, errors.New("attach probe program: the data plane is not attached to an interface")
	}
	lo, err := loopback()
	if err != nil {
		return nil, err
	}
	var links probeLinks
	for _, ifi := range []*net.Interface{iface, lo} {
		l, err := attach(prog, ifi, false)
		if err != nil {
			links.Close()
			return nil, err
		}
		links = append(links, l)
	}
	return links, nil
}

// attach attaches prog to ifi's egress with tcx or, where the kernel has
// no tcx (before 6.6) or clsact is asked for, as a cls_bpf filter on a
// clsact qdisc.
func attach(prog *ebpf.Program, ifi *net.Interface, clsact bool) (io.Closer, error) {
	if !clsact {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: prog, Attach: ebpf.AttachTCXEgress})
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return nil, fmt.Errorf("attach probe program to %s egress (tcx): %w", ifi.Name, err)
		}
	}
	q := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifi.Index,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("attach probe program to %s egress: add clsact qdisc: %w", ifi.Name, err)
	}
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: ifi.Index, Parent: netlink.HANDLE_MIN_EGRESS,
		Handle: netlink.MakeHandle(0, 1), Protocol: unix.ETH_P_ALL, Priority: filterPriority},
		Fd: prog.FD(), Name: filterName, DirectAction: true}
	// Replace: a daemon killed before it could remove its filter left it.
	if err := netlink.FilterReplace(f); err != nil {
		return nil, fmt.Errorf("attach probe program to %s egress (cls_bpf): %w", ifi.Name, err)
	}
	return clsactFilter{f}, nil
}

// The cls_bpf filter's place and name on kernels without tcx.
const (
	filterPriority = 0x51ce
	filterName     = "sluice_tc_probe"
)

type clsactFilter struct{ f *netlink.BpfFilter }

func (c clsactFilter) Close() error {
	if err := netlink.FilterDel(c.f); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove probe filter: %w", err)
	}
	return nil
}

func loopback() (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback != 0 {
			return &ifs[i], nil
		}
	}
	return nil, errors.New("attach probe program: no loopback interface")
}

type probeLinks []io.Closer

func (ls probeLinks) Close() error {
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}
