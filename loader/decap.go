package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicelb/sluice/bpf"
)

// DecapOptions configure AttachDecap.
type DecapOptions struct {
	// Iface to attach to; empty loads without attaching (packet tests).
	Iface string
	Mode  Mode
	// PinRoot defaults to DefaultPinRoot; objects go below <root>/decap/
	// (see pins.go).
	PinRoot string
	// Addrs are the outer destinations to decapsulate; empty means every
	// address on Iface.
	Addrs  []netip.Addr
	Logger *slog.Logger
}

// Decap is the backend-side decapsulation program.
type Decap struct {
	objs   bpf.DecapObjects
	link   link.Link
	pinDir string
}

// AttachDecap loads the decap program and, with Options.Iface set, attaches
// it and pins it so it outlives the process (adopting a pinned one).
func AttachDecap(ctx context.Context, opts DecapOptions) (*Decap, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	spec, err := bpf.LoadDecap()
	if err != nil {
		return nil, fmt.Errorf("parse embedded decap program: %w", err)
	}
	var iface *net.Interface
	var collOpts ebpf.CollectionOptions
	d := &Decap{}
	addrs := opts.Addrs
	if opts.Iface != "" {
		if iface, err = net.InterfaceByName(opts.Iface); err != nil {
			return nil, fmt.Errorf("interface %q: %w", opts.Iface, err)
		}
		if len(addrs) == 0 {
			if addrs, err = ifaceAddrs(iface); err != nil {
				return nil, err
			}
		}
		if d.pinDir, err = pinDirFor(opts.PinRoot, "decap", iface); err != nil {
			return nil, err
		}
		migrateLegacy(legacyPinDir(opts.PinRoot, "decap", iface.Name), d.pinDir, iface, log)
		if err := os.MkdirAll(d.pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory %s: %w", d.pinDir, err)
		}
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		collOpts.Maps.PinPath = d.pinDir
	}
	if err := spec.LoadAndAssign(&d.objs, &collOpts); err != nil {
		return nil, explainLoadError(err, d.pinDir)
	}
	if err := d.SetAddrs(addrs); err != nil {
		d.objs.Close()
		return nil, err
	}
	if iface != nil {
		d.link, _, _, err = attachOrAdopt(d.objs.XdpDecap, iface, opts.Mode, filepath.Join(d.pinDir, "link"), log)
		if err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	return d, nil
}

func ifaceAddrs(iface *net.Interface) ([]netip.Addr, error) {
	as, err := iface.Addrs()
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", iface.Name, err)
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("interface %s has no address to decapsulate for: pass addresses explicitly", iface.Name)
	}
	return out, nil
}

// SetAddrs replaces the set of outer destinations that are decapsulated.
func (d *Decap) SetAddrs(addrs []netip.Addr) error {
	want := map[bpf.DecapAddrKey]bool{}
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("decap address: invalid")
		}
		a = a.Unmap()
		want[bpf.DecapAddrKey(addrKey(a))] = true
	}
	var k bpf.DecapAddrKey
	var v uint32
	var stale []bpf.DecapAddrKey
	it := d.objs.DecapAddrs.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read decap addresses: %w", err)
	}
	for k := range want {
		if err := d.objs.DecapAddrs.Update(k, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write decap address: %w", err)
		}
	}
	for _, k := range stale {
		if err := d.objs.DecapAddrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete decap address: %w", err)
		}
	}
	return nil
}

// Program is the decap program (for packet tests).
func (d *Decap) Program() *ebpf.Program { return d.objs.XdpDecap }

// Counters returns (decapsulated, passed) packet counters.
func (d *Decap) Counters() (Counter, Counter, error) {
	var out [2]Counter
	for i := range out {
		var per []bpf.DecapCounter
		if err := d.objs.DecapStats.Lookup(uint32(i), &per); err != nil {
			return Counter{}, Counter{}, fmt.Errorf("read decap counters: %w", err)
		}
		for _, p := range per {
			out[i].Packets += p.Packets
			out[i].Bytes += p.Bytes
		}
	}
	return out[0], out[1], nil
}

// Close releases this process's handles; a pinned program keeps running.
func (d *Decap) Close() error {
	var errs []error
	if d.link != nil {
		errs = append(errs, d.link.Close())
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// removeEmptyParents removes up to n parent directories of dir that are
// empty (os.Remove refuses non-empty ones).
func removeEmptyParents(dir string, n int) {
	for range n {
		dir = filepath.Dir(dir)
		if os.Remove(dir) != nil {
			return
		}
	}
}

// DetachDecap removes the pinned decap program from iface.
func DetachDecap(iface, pinRoot string) error {
	return detachIface(iface, pinRoot, "decap", "decap program", "decap", 3)
}
