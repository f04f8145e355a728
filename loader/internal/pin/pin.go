// Package pin is where the loader's programs and maps are pinned (one
// directory per interface per network namespace), how a program is
// attached to an interface or adopts the link a previous process pinned,
// and how a pinned program is detached. The loader, its decapsulator and
// its capture reader share it.
package pin

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Pinned objects live in bpffs, one directory per interface per network
// namespace, so that interfaces of one name in two namespaces (eth0 in
// each of three backends) never share a pin:
//
//	<root>/netns-<cookie>/<ifname>-<ifindex>/        the load balancer
//	<root>/decap/netns-<cookie>/<ifname>-<ifindex>/  the decapsulator
//
// The cookie is the network namespace's (SO_NETNS_COOKIE, unique for the
// boot); the name is kept for people, with its dots written "_" (bpffs
// refuses names with a dot). A process in a private mount
// namespace (`ip netns exec` gives one) pins through /proc/1/root into the
// host's bpffs, where the pins outlive it.

// netnsCookie identifies the calling thread's network namespace.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("network namespace cookie (needs Linux 5.14): %w", err)
	}
	return c, nil
}

// hostMounts finds a process in the mount namespace this one was started
// from: PID 1, else the nearest ancestor whose namespace can be read. It
// returns that process when this one has a mount namespace of its own
// (as `ip netns exec` makes), and 0 when they share one or nothing can be
// read.
func hostMounts() int {
	ino := func(pid int) uint64 {
		fi, err := os.Stat(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil {
			return 0
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	self := ino(os.Getpid())
	if self == 0 {
		return 0
	}
	// PID 1 first, then the ancestors, nearest first (PID 1 excluded:
	// it was asked already).
	pid := 1
	for range 64 {
		if other := ino(pid); other != 0 {
			if other == self {
				return 0
			}
			return pid
		}
		if pid == 1 {
			pid = os.Getppid()
		} else {
			pid = parentOf(pid)
		}
		if pid <= 1 {
			return 0
		}
	}
	return 0
}

// parentOf is pid's parent, or 0.
func parentOf(pid int) int {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces: fields start after its ')'.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	if ppid <= 1 {
		return 0
	}
	return ppid
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// errPrivateMounts refuses to pin where the pins would vanish.
var errPrivateMounts = errors.New("this process runs in a private mount namespace (as `ip netns exec` makes), " +
	"and the host has no bpffs at /sys/fs/bpf: pins made here would vanish with the process. " +
	"Mount it on the host (mount -t bpf bpffs /sys/fs/bpf), or run the command with nsenter --net=/run/netns/NAME")

// hostRoot is where root (a path in /sys/fs/bpf) is reached from here: in
// a private mount namespace, through the root of a process in the host's,
// so that pins land in the host's bpffs.
func hostRoot(root string) (string, error) {
	if root == "" {
		root = DefaultRoot
	}
	pid := hostMounts()
	if pid == 0 {
		return root, EnsureBPFFS()
	}
	via := fmt.Sprintf("/proc/%d/root", pid)
	if !isBPFFS(filepath.Join(via, bpffsDir)) {
		return "", errPrivateMounts
	}
	return filepath.Join(via, root), nil
}

// Dir is the pin directory of a program of kind ("" for the load
// balancer, "decap") attached to ifi in this network namespace.
func Dir(root, kind string, ifi *net.Interface) (string, error) {
	r, err := hostRoot(root)
	if err != nil {
		return "", err
	}
	cookie, err := netnsCookie()
	if err != nil {
		return "", err
	}
	name := strings.ReplaceAll(ifi.Name, ".", "_")
	return filepath.Join(r, kind, fmt.Sprintf("netns-%d", cookie), fmt.Sprintf("%s-%d", name, ifi.Index)), nil
}

// Legacy is where versions before per-namespace pins kept them.
func Legacy(root, kind, ifname string) string {
	if root == "" {
		root = DefaultRoot
	}
	return filepath.Join(root, kind, ifname)
}

// OwnsIface checks that a pinned XDP link is attached to ifi in this
// network namespace: its interface index is ifi's, and ifi's XDP program
// here is the link's.
func OwnsIface(l link.Link, ifi *net.Interface) error {
	info, err := l.Info()
	if err != nil {
		return fmt.Errorf("read pinned link: %w", err)
	}
	x := info.XDP()
	if x == nil || int(x.Ifindex) != ifi.Index {
		return fmt.Errorf("the pinned link is not attached to %s (index %d)", ifi.Name, ifi.Index)
	}
	nl, err := netlink.LinkByIndex(ifi.Index)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifi.Name, err)
	}
	if xdp := nl.Attrs().Xdp; xdp == nil || !xdp.Attached || xdp.ProgId != uint32(info.Program) {
		return fmt.Errorf("the pinned link's program is not the one attached to %s in this network namespace", ifi.Name)
	}
	return nil
}

// MigrateLegacy moves a data plane pinned by an older version at the
// interface's name alone to its per-namespace directory, if it is this
// interface's; one that belongs to an interface of the same name in
// another namespace is left alone.
func MigrateLegacy(legacy, dir string, ifi *net.Interface, log *slog.Logger) {
	l, err := link.LoadPinnedLink(filepath.Join(legacy, "link"), nil)
	if err != nil {
		return
	}
	defer l.Close()
	if err := OwnsIface(l, ifi); err != nil {
		log.Warn("pins of an older version left alone", "dir", legacy, "reason", err)
		return
	}
	if _, err := os.Stat(dir); err == nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		log.Warn("move pins of an older version", "from", legacy, "err", err)
		return
	}
	if err := os.Rename(legacy, dir); err != nil {
		log.Warn("move pins of an older version", "from", legacy, "err", err)
		return
	}
	log.Info("moved pins of an older version to their per-namespace directory", "from", legacy, "to", dir)
}

// Map is a map to open from a pin directory into *To. An optional
// one may be missing (pinned by a version without it) and stays nil.
type Map struct {
	Name     string
	To       **ebpf.Map
	Optional bool // a map an older version did not pin
}

// OpenMaps opens every map of ms from dir, for tools that read a
// data plane another process pinned. On an error it closes what it
// opened; a missing map comes back as an error wrapping os.ErrNotExist.
func OpenMaps(dir string, ms []Map) error {
	for i, m := range ms {
		var err error
		if *m.To, err = ebpf.LoadPinnedMap(filepath.Join(dir, m.Name), nil); err == nil || m.Optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		for _, o := range ms[:i] {
			if *o.To != nil {
				(*o.To).Close()
				*o.To = nil
			}
		}
		return fmt.Errorf("open pinned %s: %w", m.Name, err)
	}
	return nil
}

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

// ExplainLoadError says why a collection did not load, with what to do.
func ExplainLoadError(err error, pinDir string) error {
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

// AttachOrAdopt adopts the link pinned at pin, swapping its program for prog
// in one step so no packet meets an interface without a program, or else
// attaches prog afresh and pins the link.
func AttachOrAdopt(prog *ebpf.Program, iface *net.Interface, mode Mode, pin string, log *slog.Logger) (link.Link, Mode, bool, error) {
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if err := OwnsIface(l, iface); err != nil {
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
	l, mode, err := AttachXDP(prog, iface, mode, log)
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

// AttachXDP attaches prog in the requested mode; auto tries native first and
// falls back to generic with a logged reason.
func AttachXDP(prog *ebpf.Program, iface *net.Interface, mode Mode, log *slog.Logger) (link.Link, Mode, error) {
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

// DetachIface detaches what is pinned for the interface of that name in
// this network namespace, or, left by an older version, at its name alone
// if it is this interface's.
func DetachIface(iface, pinRoot, kind, what, linkKind string, parents int) error {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("interface %q: %w", iface, err)
	}
	dir, err := Dir(pinRoot, kind, ifi)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		legacy := Legacy(pinRoot, kind, iface)
		if l, err := link.LoadPinnedLink(filepath.Join(legacy, "link"), nil); err == nil {
			owned := OwnsIface(l, ifi) == nil
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
	RemoveEmptyParents(dir, parents)
	return errors.Join(errs...)
}

// RemoveEmptyParents removes dir's parents that are left empty, up to n.
func RemoveEmptyParents(dir string, n int) {
	for range n {
		dir = filepath.Dir(dir)
		if os.Remove(dir) != nil {
			return
		}
	}
}

// DefaultRoot is where pinned objects live.
const DefaultRoot = "/sys/fs/bpf/sluice"

// bpffsDir is where bpffs is mounted.
const bpffsDir = "/sys/fs/bpf"

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
