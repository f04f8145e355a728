// Package loader loads sluice's XDP programs, attaches them to an interface,
// pins their maps and link so forwarding outlives the process, adopts what a
// previous process pinned, and gives typed access to every map. No other
// package touches raw maps.
package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader/internal/pin"
)

// DefaultPinRoot is where pinned objects live (see loader/internal/pin
// for the layout below it).
const DefaultPinRoot = pin.DefaultRoot

// Mode is the XDP attach mode.
type Mode = pin.Mode

// Attach modes.
const (
	ModeAuto    = pin.ModeAuto
	ModeNative  = pin.ModeNative
	ModeGeneric = pin.ModeGeneric
)

// ParseMode parses native, generic or auto.
func ParseMode(s string) (Mode, error) { return pin.ParseMode(s) }

// Options configure Load.
type Options struct {
	// Iface to attach to. Empty loads the program without attaching or
	// pinning anything (packet tests).
	Iface string
	Mode  Mode
	// PinRoot defaults to DefaultPinRoot.
	PinRoot string
	// FlowTableSize is the capacity (entries) of each connection table,
	// IPv4 and IPv6; 0 means DefaultFlowTableSize. It must match the
	// pinned tables when adopting.
	FlowTableSize uint32
	Logger        *slog.Logger
	// Object loads the program's object instead of bpf.LoadLb: benchmarks
	// compare variant builds of lb.c (bpf/nocapture) with the real one.
	Object func() (*ebpf.CollectionSpec, error)
}

// Datapath is a loaded (and possibly attached) load-balancer program with its maps.
type Datapath struct {
	objs    bpf.LbObjects
	link    link.Link
	progID  uint32 // xdp_lb's ID, as the interface reports what runs on it
	iface   *net.Interface
	pinDir  string
	mode    Mode
	adopted bool
	log     *slog.Logger
	// ringTemplate and vipTableTemplate are inner-map specs from the object file.
	ringTemplate     *ebpf.MapSpec
	vipTableTemplate *ebpf.MapSpec

	mu sync.Mutex // serialises ring replacement and VIP writes
	// installed is what this process last installed in each ring slot
	// (under mu): ReplaceRing compares a new ring with it instead of
	// reading the active ring back, which takes longer than the swap
	// itself. A slot this process has not written (adopted) is read.
	installed map[uint32][]uint32
}

// Load loads the data plane. With Options.Iface set it attaches to that
// interface and pins maps and link under PinRoot/<iface>; if a previous
// process left them pinned, it adopts them: the maps keep their contents and
// the new program replaces the old one atomically on the same link.
func Load(ctx context.Context, opts Options) (*Datapath, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	d := &Datapath{log: log, mode: opts.Mode}

	object := opts.Object
	if object == nil {
		object = bpf.LoadLb
	}
	spec, err := object()
	if err != nil {
		return nil, fmt.Errorf("parse embedded lb program: %w", err)
	}
	size := opts.FlowTableSize
	if size == 0 {
		size = DefaultFlowTableSize
	}
	spec.Maps[bpf.LbMapFlows4].MaxEntries = size
	spec.Maps[bpf.LbMapFlows6].MaxEntries = size
	// Inner maps are created often (every swap): drop their BTF, which the
	// kernel would otherwise load anew for each. The outer maps' templates
	// drop it too: before Linux 6.2 an inner map must match its template
	// in having BTF or not (its timer offset is -ENOENT with BTF, -EINVAL
	// without), or every swap fails with EINVAL (make test-kernel, 6.1).
	for _, outer := range []string{bpf.LbMapRings, bpf.LbMapVips} {
		spec.Maps[outer].InnerMap.Key, spec.Maps[outer].InnerMap.Value = nil, nil
	}
	d.ringTemplate = spec.Maps[bpf.LbMapRings].InnerMap.Copy()
	d.vipTableTemplate = spec.Maps[bpf.LbMapVips].InnerMap.Copy()

	var collOpts ebpf.CollectionOptions
	if opts.Iface != "" {
		d.iface, err = net.InterfaceByName(opts.Iface)
		if err != nil {
			return nil, fmt.Errorf("interface %q: %w", opts.Iface, err)
		}
		if d.pinDir, err = pin.Dir(opts.PinRoot, "", d.iface); err != nil {
			return nil, err
		}
		pin.MigrateLegacy(pin.Legacy(opts.PinRoot, "", d.iface.Name), d.pinDir, d.iface, log)
		if err := os.MkdirAll(d.pinDir, 0o700); err != nil {
			return nil, fmt.Errorf("create pin directory %s: %w", d.pinDir, err)
		}
		for name, m := range spec.Maps {
			if !strings.HasPrefix(name, ".") {
				m.Pinning = ebpf.PinByName
			}
		}
		collOpts.Maps.PinPath = d.pinDir
		if err := spec.Variables[bpf.LbVarProbeIfindex].Set(uint32(d.iface.Index)); err != nil {
			return nil, fmt.Errorf("set probe interface: %w", err)
		}
	}

	if err := spec.LoadAndAssign(&d.objs, &collOpts); err != nil {
		return nil, pin.ExplainLoadError(err, d.pinDir)
	}
	if d.iface != nil {
		if err := d.attach(); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	return d, nil
}

func (d *Datapath) attach() error {
	l, mode, adopted, err := pin.AttachOrAdopt(d.objs.XdpLb, d.iface, d.mode, filepath.Join(d.pinDir, "link"), d.log)
	if err != nil {
		return err
	}
	d.link, d.mode, d.adopted = l, mode, adopted
	if info, err := d.objs.XdpLb.Info(); err == nil {
		if id, ok := info.ID(); ok {
			d.progID = uint32(id)
		}
	}
	return nil
}

// Adopted reports whether Load took over a data plane a previous process pinned.
func (d *Datapath) Adopted() bool { return d.adopted }

// Mode is the attach mode in use (for an adopted link, the requested one).
func (d *Datapath) Mode() Mode { return d.mode }

// PinDir is where this data plane's objects are pinned ("" when unpinned).
func (d *Datapath) PinDir() string { return d.pinDir }

// Program is the load-balancer program (for tests and BPF_PROG_TEST_RUN).
func (d *Datapath) Program() *ebpf.Program { return d.objs.XdpLb }

// ProbeProgram is tc_probe (check via vip), for tcprobe.Attach.
func (d *Datapath) ProbeProgram() *ebpf.Program { return d.objs.TcProbe }

// Iface is the interface attached to, or nil.
func (d *Datapath) Iface() *net.Interface { return d.iface }

// Attached reports whether the interface runs this data plane's XDP
// program: not none, and not another program someone attached after this
// one went (a route announced for it would draw traffic nobody steers).
// It asks the kernel in the calling thread's network namespace.
func (d *Datapath) Attached() bool {
	if d.iface == nil {
		return false
	}
	l, err := netlink.LinkByIndex(d.iface.Index)
	if err != nil {
		return false
	}
	x := l.Attrs().Xdp
	return x != nil && x.Attached && d.progID != 0 && x.ProgId == d.progID
}

// Close releases this process's handles. Pinned maps and link stay, so the
// data plane keeps forwarding.
func (d *Datapath) Close() error {
	var errs []error
	if d.link != nil {
		errs = append(errs, d.link.Close())
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Detach removes the program from the interface and deletes every pinned
// object: forwarding stops.
func (d *Datapath) Detach() error {
	var errs []error
	if d.link != nil {
		errs = append(errs, d.link.Unpin(), d.link.Close())
		d.link = nil
	}
	if d.pinDir != "" {
		errs = append(errs, os.RemoveAll(d.pinDir))
		pin.RemoveEmptyParents(d.pinDir, 2)
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// EnsureBPFFS mounts bpffs at /sys/fs/bpf when it is not mounted.
func EnsureBPFFS() error { return pin.EnsureBPFFS() }

// DetachPinned removes the load balancer that a daemon left pinned for
// iface: the program leaves the interface and every pinned map goes.
// Forwarding stops.
func DetachPinned(iface, pinRoot string) error {
	return pin.DetachIface(iface, pinRoot, "", "sluice data plane", "xdp", 2)
}
