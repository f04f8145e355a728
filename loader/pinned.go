package loader

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/pin"
)

// Pinned is a read-only view of the data plane a daemon pinned for an
// interface, for tools that run beside the daemon (sluice capture): its
// VIPs, backends and counters, and packet capture.
type Pinned struct {
	d                  *Datapath
	cfg, state, events *ebpf.Map
}

// OpenPinned opens the data plane pinned for iface in this network
// namespace under pinRoot.
func OpenPinned(iface, pinRoot string) (*Pinned, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", iface, err)
	}
	dir, err := pin.Dir(pinRoot, "", ifi)
	if err != nil {
		return nil, err
	}
	p := &Pinned{d: &Datapath{}}
	err = pin.OpenMaps(dir, []pin.Map{{Name: bpf.LbMapVips, To: &p.d.objs.Vips}, {Name: bpf.LbMapBackends, To: &p.d.objs.Backends},
		{Name: bpf.LbMapStats, To: &p.d.objs.Stats}, {Name: bpf.LbMapCapture, To: &p.cfg},
		{Name: bpf.LbMapCaptureState, To: &p.state}, {Name: bpf.LbMapCaptureEvents, To: &p.events}})
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no sluice data plane with capture is pinned for %s under %s (is the daemon running, and this version?)", iface, pinRoot)
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// CaptureMaps are the maps packet capture drives (loader/capture).
func (p *Pinned) CaptureMaps() (cfg, state, events *ebpf.Map) { return p.cfg, p.state, p.events }

// VIPs reads the VIPs, with their ids.
func (p *Pinned) VIPs() (map[VIPKey]VIP, error) { return p.d.VIPs() }

// Backends reads the backend entries by index.
func (p *Pinned) Backends() (map[uint32]Backend, error) { return p.d.Backends() }

// Stats reads the global counters.
func (p *Pinned) Stats() (map[Stat]Counter, error) { return p.d.Stats() }

// Close releases the maps.
func (p *Pinned) Close() error {
	var errs []error
	for _, m := range []*ebpf.Map{p.d.objs.Vips, p.d.objs.Backends, p.d.objs.Stats, p.cfg, p.state, p.events} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// CaptureMaps are the maps packet capture drives (loader/capture; the
// packet tests capture from their own data plane).
func (d *Datapath) CaptureMaps() (cfg, state, events *ebpf.Map) {
	return d.objs.Capture, d.objs.CaptureState, d.objs.CaptureEvents
}
