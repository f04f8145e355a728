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
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
)

// DefaultPinRoot is where pinned objects live (see pins.go for the
// layout below it).
const DefaultPinRoot = "/sys/fs/bpf/sluice"

// bpffsDir is where bpffs is mounted.
const bpffsDir = "/sys/fs/bpf"

// Mode is the XDP attach mode.
type Mode int

// Attach modes.
const (
	ModeAuto Mode = iota
	ModeNative
	ModeGeneric
)

func (m Mode) String() string {
	switch m {
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return "auto"
}

// ParseMode parses native, generic or auto.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "auto", "":
		return ModeAuto, nil
	case "native":
		return ModeNative, nil
	case "generic":
		return ModeGeneric, nil
	}
	return 0, fmt.Errorf("xdp mode %q: want native, generic or auto", s)
}

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
		if d.pinDir, err = pinDirFor(opts.PinRoot, "", d.iface); err != nil {
			return nil, err
		}
		migrateLegacy(legacyPinDir(opts.PinRoot, "", d.iface.Name), d.pinDir, d.iface, log)
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
		return nil, explainLoadError(err, d.pinDir)
	}
	if d.iface != nil {
		if err := d.attach(); err != nil {
			d.objs.Close()
			return nil, err
		}
	}
	return d, nil
}

func explainLoadError(err error, pinDir string) error {
	var ve *ebpf.VerifierError
	switch {
	case errors.As(err, &ve):
		return fmt.Errorf("load xdp program: the kernel verifier refused it:\n%+v", ve)
	case errors.Is(err, unix.EPERM), errors.Is(err, os.ErrPermission):
		return fmt.Errorf("load xdp program: %w (run as root, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)", err)
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return fmt.Errorf("load xdp program: pinned maps in %s do not match this version or flow table size: %w "+
			"(detach with the old version, or remove %s, which stops forwarding)", pinDir, err, pinDir)
	}
	return fmt.Errorf("load xdp program: %w", err)
}

func (d *Datapath) attach() error {
	l, mode, adopted, err := attachOrAdopt(d.objs.XdpLb, d.iface, d.mode, filepath.Join(d.pinDir, "link"), d.log)
	if err != nil {
		return err
	}
	d.link, d.mode, d.adopted = l, mode, adopted
	return nil
}

// attachOrAdopt adopts the link pinned at pin, swapping its program for prog
// in one step so no packet meets an interface without a program, or else
// attaches prog afresh and pins the link.
func attachOrAdopt(prog *ebpf.Program, iface *net.Interface, mode Mode, pin string, log *slog.Logger) (link.Link, Mode, bool, error) {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := ownsIface(l, iface); err != nil {
			l.Close()
			return nil, 0, false, fmt.Errorf("adopt pinned xdp link %s: %w; refusing to take it over (remove it to start afresh)", pin, err)
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, 0, false, fmt.Errorf("adopt pinned xdp link on %s: replace program: %w", iface.Name, err)
		}
		log.Info("adopted pinned xdp link", "iface", iface.Name, "pin", pin)
		return l, mode, true, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, 0, false, fmt.Errorf("load pinned xdp link %s: %w", pin, err)
	}
	l, mode, err := attachXDP(prog, iface, mode, log)
	if err != nil {
		return nil, 0, false, err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return nil, 0, false, fmt.Errorf("pin xdp link at %s: %w", pin, err)
	}
	log.Info("attached xdp program", "iface", iface.Name, "mode", mode.String(), "pin", pin)
	return l, mode, false, nil
}

// attachXDP attaches prog in the requested mode; auto tries native first and
// falls back to generic with a logged reason.
func attachXDP(prog *ebpf.Program, iface *net.Interface, mode Mode, log *slog.Logger) (link.Link, Mode, error) {
	try := func(m Mode) (link.Link, error) {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: iface.Index, Flags: flags})
		if err != nil {
			if errors.Is(err, unix.EPERM) {
				return nil, fmt.Errorf("attach xdp to %s in %s mode: %w (run as root or grant CAP_NET_ADMIN)", iface.Name, m, err)
			}
			if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
				return nil, fmt.Errorf("attach xdp to %s in %s mode: another XDP program is attached: %w", iface.Name, m, err)
			}
			return nil, fmt.Errorf("attach xdp to %s in %s mode: %w", iface.Name, m, err)
		}
		return l, nil
	}
	switch mode {
	case ModeNative, ModeGeneric:
		l, err := try(mode)
		if err != nil && mode == ModeNative {
			err = fmt.Errorf("%w (the driver may not support native XDP; try --xdp-mode generic or auto)", err)
		}
		return l, mode, err
	}
	l, err := try(ModeNative)
	if err == nil {
		return l, ModeNative, nil
	}
	log.Warn("native XDP refused, falling back to generic mode", "iface", iface.Name, "reason", err)
	l, err2 := try(ModeGeneric)
	if err2 != nil {
		return nil, 0, fmt.Errorf("%w; generic fallback: %w", err, err2)
	}
	return l, ModeGeneric, nil
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
		removeEmptyParents(d.pinDir, 2)
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// EnsureBPFFS mounts bpffs at /sys/fs/bpf when it is not mounted.
func EnsureBPFFS() error {
	const dir = bpffsDir
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w (run as root)", dir, err)
	}
	return nil
}

// DetachPinned removes the load balancer that a daemon left pinned for
// iface: the program leaves the interface and every pinned map goes.
// Forwarding stops.
func DetachPinned(iface, pinRoot string) error {
	return detachIface(iface, pinRoot, "", "sluice data plane", "xdp", 2)
}

// detachIface detaches what is pinned for the interface of that name in
// this network namespace, or, left by an older version, at its name alone
// if it is this interface's.
func detachIface(iface, pinRoot, kind, what, linkKind string, parents int) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("interface %q: %w", iface, err)
	}
	dir, err := pinDirFor(pinRoot, kind, ifi)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		legacy := legacyPinDir(pinRoot, kind, iface)
		if l, err := link.LoadPinnedLink(filepath.Join(legacy, "link"), nil); err == nil {
			owned := ownsIface(l, ifi) == nil
			l.Close()
			if owned {
				return detachPinned(legacy, iface, what, linkKind, parents-1)
			}
		}
	}
	return detachPinned(dir, iface, what, linkKind, parents)
}

// detachPinned unpins and closes the XDP link pinned in dir, removes dir,
// and then its parents that are left empty, up to parents levels. what
// and kind name the program in errors.
func detachPinned(dir, iface, what, kind string, parents int) error {
	l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no %s is pinned for %s (%s)", what, iface, dir)
	}
	if err != nil {
		return fmt.Errorf("load pinned %s link for %s: %w", kind, iface, err)
	}
	errs := []error{l.Unpin(), l.Close(), os.RemoveAll(dir)}
	removeEmptyParents(dir, parents)
	return errors.Join(errs...)
}
