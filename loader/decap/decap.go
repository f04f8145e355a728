// Package decap is the decapsulator a backend runs instead of an ipip or
// fou device: xdp_decap strips the outer header of IPIP and GUE packets
// addressed to this host from the sources it allows, and the kernel
// delivers the inner packet. It loads, attaches, pins and adopts it like
// the loader does the balancer.
package decap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/layout"
	"github.com/sluicelb/sluice/loader/internal/pin"
)

// Options configure Attach.
type Options struct {
	// Iface to attach to; empty loads without attaching (packet tests).
	Iface string
	Mode  pin.Mode
	// PinRoot defaults to pin.DefaultRoot; objects go below <root>/decap/
	// (see pins.go).
	PinRoot string
	// Addrs are the outer destinations to decapsulate; empty means every
	// address on Iface.
	Addrs []netip.Addr
	// AllowFrom are outer source prefixes accepted besides the default
	// ones: the subnets of Iface's addresses and sluice's own outer-source
	// prefixes (layout.DefaultEncapSrc4/16, layout.DefaultEncapSrc6/96). Everything
	// else addressed to us is dropped and counted as refused.
	AllowFrom []netip.Prefix
	// AllowOnly accepts AllowFrom alone, without the defaults.
	AllowOnly bool
	// GUEPorts are the UDP ports GUE (variant 1) arrives on; none by
	// default, as GUE takes every datagram to such a port.
	GUEPorts []uint16
	Logger   *slog.Logger
}

// Counters are the decap program's packet counters.
type Counters struct {
	// Decapsulated packets were stripped and passed to the stack.
	Decapsulated layout.Counter `json:"decapsulated"`
	// Passed packets were not for us and went to the stack untouched.
	Passed layout.Counter `json:"passed"`
	// Refused packets were encapsulated to us from a source outside the
	// allow list, and were dropped.
	Refused layout.Counter `json:"refused"`
}

// Decap is the backend-side decapsulation program.
type Decap struct {
	objs   bpf.DecapObjects
	link   link.Link
	pinDir string
}

// Attach loads the decap program and, with Options.Iface set, attaches
// it and pins it so it outlives the process (adopting a pinned one).
func Attach(ctx context.Context, opts Options) (*Decap, error) {
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
		if d.pinDir, err = pin.Dir(opts.PinRoot, "decap", iface); err != nil {
			return nil, err
		}
		pin.MigrateLegacy(pin.Legacy(opts.PinRoot, "decap", iface.Name), d.pinDir, iface, log)
		if err := os.MkdirAll(d.pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory %s: %w", d.pinDir, err)
		}
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinByName
		}
		collOpts.Maps.PinPath = d.pinDir
	}
	if err := spec.LoadAndAssign(&d.objs, &collOpts); err != nil {
		return nil, pin.ExplainLoadError(err, d.pinDir)
	}
	// Both lists are checked before either is written: a bad one changes
	// nothing of a decapsulator already attached.
	allow, err := allowList(iface, opts.AllowFrom, opts.AllowOnly)
	if err == nil {
		err = checkAllow(allow, int(d.objs.DecapAllow.MaxEntries()))
	}
	if err == nil {
		err = checkGUEPorts(opts.GUEPorts, int(d.objs.DecapGuePorts.MaxEntries()))
	}
	if err == nil {
		err = d.SetAddrs(addrs)
	}
	if err == nil {
		err = d.SetGUEPorts(opts.GUEPorts)
	}
	if err == nil {
		err = d.SetAllow(allow)
	}
	if err != nil {
		d.objs.Close()
		return nil, err
	}
	if iface != nil {
		d.link, _, _, err = pin.AttachOrAdopt(d.objs.XdpDecap, iface, opts.Mode, filepath.Join(d.pinDir, "link"), log)
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

// allowList is the outer-source allow list Attach installs.
func allowList(iface *net.Interface, extra []netip.Prefix, only bool) ([]netip.Prefix, error) {
	if only {
		if len(extra) == 0 {
			return nil, fmt.Errorf("allow-from: empty, and without the defaults every encapsulated packet would be refused")
		}
		return extra, nil
	}
	out := []netip.Prefix{netip.PrefixFrom(layout.DefaultEncapSrc4, 16), netip.PrefixFrom(layout.DefaultEncapSrc6, 96)}
	if iface != nil {
		as, err := iface.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", iface.Name, err)
		}
		for _, a := range as {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(n.IP)
			ones, bits := n.Mask.Size()
			ip = ip.Unmap()
			if ok && bits == ip.BitLen() && !ip.IsLinkLocalUnicast() {
				out = append(out, netip.PrefixFrom(ip, ones).Masked())
			}
		}
	}
	return append(out, extra...), nil
}

// checkAllow refuses an allow list the map cannot hold as given.
func checkAllow(prefixes []netip.Prefix, limit int) error {
	for _, p := range prefixes {
		if !p.IsValid() {
			return fmt.Errorf("allow-from: invalid prefix")
		}
		if p.Addr().Is4In6() {
			return fmt.Errorf("allow-from %s: an IPv4-mapped prefix never matches; give it as IPv4", p)
		}
	}
	if len(prefixes) > limit {
		return fmt.Errorf("allow-from: %d prefixes, at most %d", len(prefixes), limit)
	}
	return nil
}

// SetAllow replaces the outer-source allow list.
func (d *Decap) SetAllow(prefixes []netip.Prefix) error {
	if err := checkAllow(prefixes, int(d.objs.DecapAllow.MaxEntries())); err != nil {
		return err
	}
	want := map[bpf.DecapDecapAllowKey]bool{}
	for _, p := range prefixes {
		want[allowKey(p)] = true
	}
	return replaceSet(d.objs.DecapAllow, want, "decap allow list")
}

func allowKey(p netip.Prefix) bpf.DecapDecapAllowKey {
	p = p.Masked()
	k := bpf.DecapDecapAllowKey{Prefixlen: 32 + uint32(p.Bits()), Family: 6}
	if p.Addr().Is4() {
		k.Family = 4
	}
	copy(k.Addr[:], p.Addr().AsSlice())
	return k
}

func allowPrefix(k bpf.DecapDecapAllowKey) netip.Prefix {
	bits := int(k.Prefixlen) - 32
	if k.Family == 4 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
}

// SetAddrs replaces the set of outer destinations that are decapsulated.
func (d *Decap) SetAddrs(addrs []netip.Addr) error {
	want := map[bpf.DecapAddrKey]bool{}
	for _, a := range addrs {
		if !a.IsValid() {
			return fmt.Errorf("decap address: invalid")
		}
		a = a.Unmap()
		want[bpf.DecapAddrKey(layout.AddrKey(a))] = true
	}
	return replaceSet(d.objs.DecapAddrs, want, "decap addresses")
}

func checkGUEPorts(ports []uint16, limit int) error {
	if slices.Contains(ports, 0) {
		return fmt.Errorf("gue-port 0: want 1-65535")
	}
	if len(ports) > limit {
		return fmt.Errorf("gue-port: %d ports, at most %d", len(ports), limit)
	}
	return nil
}

// SetGUEPorts replaces the UDP ports on which GUE is decapsulated.
func (d *Decap) SetGUEPorts(ports []uint16) error {
	if err := checkGUEPorts(ports, int(d.objs.DecapGuePorts.MaxEntries())); err != nil {
		return err
	}
	want := map[uint16]bool{}
	for _, p := range ports {
		want[layout.Htons(p)] = true
	}
	return replaceSet(d.objs.DecapGuePorts, want, "decap GUE ports")
}

// GUEPorts reads the GUE ports back from the kernel, sorted.
func (d *Decap) GUEPorts() ([]uint16, error) {
	if d.objs.DecapGuePorts == nil {
		return nil, nil
	}
	var k uint16
	var v uint32
	var out []uint16
	it := d.objs.DecapGuePorts.Iterate()
	for it.Next(&k, &v) {
		out = append(out, layout.Ntohs(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read decap GUE ports: %w", err)
	}
	slices.Sort(out)
	return out, nil
}

// replaceSet makes the keys of m, a map used as a set (every value 1),
// exactly want: it adds what is missing before it deletes what is no
// longer wanted, so a key in both sets is never absent.
func replaceSet[K comparable](m *ebpf.Map, want map[K]bool, what string) error {
	var k K
	var v uint32
	var stale []K
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	for k := range want {
		if err := m.Update(k, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write %s: %w", what, err)
		}
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", what, err)
		}
	}
	return nil
}

// Program is the decap program (for packet tests).
func (d *Decap) Program() *ebpf.Program { return d.objs.XdpDecap }

// Counters reads the packet counters, summed over CPUs.
func (d *Decap) Counters() (Counters, error) {
	var out Counters
	for i, c := range []*layout.Counter{&out.Decapsulated, &out.Passed, &out.Refused} {
		var per []bpf.DecapCounter
		if err := d.objs.DecapStats.Lookup(uint32(i), &per); err != nil {
			return Counters{}, fmt.Errorf("read decap counters: %w", err)
		}
		for _, p := range per {
			c.Packets += p.Packets
			c.Bytes += p.Bytes
		}
	}
	return out, nil
}

// Allowed reads the outer-source allow list back from the kernel.
func (d *Decap) Allowed() ([]netip.Prefix, error) {
	var k bpf.DecapDecapAllowKey
	var v uint32
	var out []netip.Prefix
	it := d.objs.DecapAllow.Iterate()
	for it.Next(&k, &v) {
		out = append(out, allowPrefix(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read decap allow list: %w", err)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out, nil
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

// pin.RemoveEmptyParents removes up to n parent directories of dir that are
// empty (os.Remove refuses non-empty ones).
// Open opens the maps of the decap program pinned for iface in this
// network namespace, to read its counters and allow list.
func Open(iface, pinRoot string) (*Decap, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", iface, err)
	}
	dir, err := pin.Dir(pinRoot, "decap", ifi)
	if err != nil {
		return nil, err
	}
	d := &Decap{pinDir: dir}
	err = pin.OpenMaps(dir, []pin.Map{{Name: "decap_addrs", To: &d.objs.DecapAddrs}, {Name: "decap_allow", To: &d.objs.DecapAllow},
		{Name: "decap_stats", To: &d.objs.DecapStats},
		{Name: "decap_gue_ports", To: &d.objs.DecapGuePorts, Optional: true}}) // absent if pinned before GUE: no ports
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no decap program is pinned for %s (%s): attach one with sluice decap attach --iface %s", iface, dir, iface)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", iface, err)
	}
	return d, nil
}

// Detach removes the pinned decap program from iface.
func Detach(iface, pinRoot string) error {
	return pin.DetachIface(iface, pinRoot, "decap", "decap program", "decap", 3)
}
