package loader

import (
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicelb/sluice/bpf"
)

// Probe marks (check via vip): a socket marked ProbeMark(idx) has its
// packets sent by tc_probe to backend idx, as the data plane sends its
// VIP's traffic there.
const (
	probeTag      = uint32(bpf.LbSluiceProbeSLUICE_PROBE_TAG)
	probeTagShift = uint32(bpf.LbSluiceProbeSLUICE_PROBE_TAG_SHIFT)
)

// ProbeMark is the SO_MARK that sends a probe to backend idx.
func ProbeMark(idx uint32) (uint32, error) {
	if idx == 0 || idx >= MaxBackends {
		return 0, fmt.Errorf("probe mark: backend index %d out of 1..%d", idx, MaxBackends-1)
	}
	return probeTag<<probeTagShift | idx, nil
}

// ProbeBackend reads the backend index back from a probe mark.
func ProbeBackend(mark uint32) (uint32, bool) {
	if mark>>probeTagShift != probeTag {
		return 0, false
	}
	return mark & (1<<probeTagShift - 1), true
}

// ProbeProgram is tc_probe, for packet tests.
func (d *Datapath) ProbeProgram() *ebpf.Program { return d.objs.TcProbe }

// AttachProbes attaches tc_probe to the egress of the data plane's
// interface and of loopback (a probe to a VIP that is a local address
// leaves through loopback, and tc_probe sends it out of the interface).
// Closing the result detaches both; nothing is pinned, so probes stop
// with the process that marks them. It needs tcx (Linux 6.6).
func (d *Datapath) AttachProbes() (io.Closer, error) {
	if d.iface == nil {
		return nil, errors.New("attach probe program: the data plane is not attached to an interface")
	}
	lo, err := loopback()
	if err != nil {
		return nil, err
	}
	var links probeLinks
	for _, ifi := range []*net.Interface{d.iface, lo} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: d.objs.TcProbe, Attach: ebpf.AttachTCXEgress})
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
