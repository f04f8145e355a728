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
// probes stop with the process that marks them. It needs tcx (Linux 6.6).
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
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: prog, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			links.Close()
			return nil, fmt.Errorf("attach probe program to %s egress (tcx, Linux 6.6 or later): %w", ifi.Name, err)
		}
		links = append(links, l)
	}
	return links, nil
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

type probeLinks []link.Link

func (ls probeLinks) Close() error {
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}
