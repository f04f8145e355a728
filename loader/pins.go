package loader

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
		root = DefaultPinRoot
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

// pinDirFor is the pin directory of a program of kind ("" for the load
// balancer, "decap") attached to ifi in this network namespace.
func pinDirFor(root, kind string, ifi *net.Interface) (string, error) {
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

// legacyPinDir is where versions before per-namespace pins kept them.
func legacyPinDir(root, kind, ifname string) string {
	if root == "" {
		root = DefaultPinRoot
	}
	return filepath.Join(root, kind, ifname)
}

// ownsIface checks that a pinned XDP link is attached to ifi in this
// network namespace: its interface index is ifi's, and ifi's XDP program
// here is the link's.
func ownsIface(l link.Link, ifi *net.Interface) error {
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

// migrateLegacy moves a data plane pinned by an older version at the
// interface's name alone to its per-namespace directory, if it is this
// interface's; one that belongs to an interface of the same name in
// another namespace is left alone.
func migrateLegacy(legacy, dir string, ifi *net.Interface, log *slog.Logger) {
	l, err := link.LoadPinnedLink(filepath.Join(legacy, "link"), nil)
	if err != nil {
		return
	}
	defer l.Close()
	if err := ownsIface(l, ifi); err != nil {
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

// pinnedMap is a map to open from a pin directory into *to. An optional
// one may be missing (pinned by a version without it) and stays nil.
type pinnedMap struct {
	name     string
	to       **ebpf.Map
	optional bool
}

// openPinnedMaps opens every map of ms from dir, for tools that read a
// data plane another process pinned. On an error it closes what it
// opened; a missing map comes back as an error wrapping os.ErrNotExist.
func openPinnedMaps(dir string, ms []pinnedMap) error {
	for i, m := range ms {
		var err error
		if *m.to, err = ebpf.LoadPinnedMap(filepath.Join(dir, m.name), nil); err == nil || m.optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		for _, o := range ms[:i] {
			if *o.to != nil {
				(*o.to).Close()
				*o.to = nil
			}
		}
		return fmt.Errorf("open pinned %s: %w", m.name, err)
	}
	return nil
}
