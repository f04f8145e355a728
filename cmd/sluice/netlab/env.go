// Package netlab is the lab that `sluice lab` and `sluice demo` run, and
// the tests build: throwaway hosts in network namespaces, joined by veth
// pairs to a Linux bridge in a switch namespace of their own, with the
// lab's client, LB, backends (model servers), router (BIRD) and etcd.
// Every run uses unique names, touches nothing outside its namespaces and
// its bpffs directory, and removes everything on Close; namespaces left
// behind by a process that died are swept by the next New.
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader"
)

// Prefix starts the name of every namespace and bpffs directory New makes
// (tests'; the lab runner names its own).
const Prefix = "sluicet"

const netnsDir = "/var/run/netns"

// Env is one set of namespaces.
type Env struct {
	prefix string
	id     string // <pid>-<rand>
	short  string // 5 hex chars, the start of every link name
	sw     netns.NsHandle
	swName string
	log    *slog.Logger

	mu      sync.Mutex
	hosts   []*Host
	closers []func() error
}

// New creates the switch namespace and its bridge.
func New(ctx context.Context, log *slog.Logger) (*Env, error) {
	return NewWithPrefix(ctx, log, Prefix)
}

// NewWithPrefix is New with another name prefix. Environments under
// another prefix are not swept by New: `sluice lab` keeps its namespaces
// after the command that made them has exited.
func NewWithPrefix(ctx context.Context, log *slog.Logger, prefix string) (*Env, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	if prefix == Prefix {
		Sweep(log)
	}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	h := hex.EncodeToString(r[:])
	e := &Env{prefix: prefix, id: fmt.Sprintf("%d-%s", os.Getpid(), h), short: h[:5], log: log}
	e.swName = e.nsName("sw")
	sw, err := newNamedNS(e.swName)
	if err != nil {
		return nil, fmt.Errorf("create switch namespace: %w", err)
	}
	e.sw = sw
	err = withHandle(sw, func(nl *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: 1600}}
		if err := nl.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge: %w", err)
		}
		return nl.LinkSetUp(br)
	})
	if err != nil {
		e.Close()
		return nil, err
	}
	if err := loader.EnsureBPFFS(); err != nil {
		e.Close()
		return nil, err
	}
	if err := os.MkdirAll(e.PinRoot(), 0o700); err != nil {
		e.Close()
		return nil, fmt.Errorf("create pin root: %w", err)
	}
	return e, nil
}

func (e *Env) nsName(host string) string { return fmt.Sprintf("%s-%s-%s", e.prefix, e.id, host) }

// ID is this environment's unique id.
func (e *Env) ID() string { return e.id }

// PinRoot is the bpffs directory for objects this environment pins.
func (e *Env) PinRoot() string { return filepath.Join("/sys/fs/bpf", e.prefix+"-"+e.id) }

// OnClose registers fn to run first when the environment closes.
func (e *Env) OnClose(fn func() error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closers = append(e.closers, fn)
}

// Close stops everything registered, deletes every namespace and the pin root.
func (e *Env) Close() error {
	e.mu.Lock()
	closers, hosts := e.closers, e.hosts
	e.closers, e.hosts = nil, nil
	e.mu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		errs = append(errs, closers[i]())
	}
	for _, h := range hosts {
		h.ns.Close()
		errs = append(errs, deleteNS(h.nsName))
	}
	if e.sw.IsOpen() {
		e.sw.Close()
		errs = append(errs, deleteNS(e.swName))
	}
	errs = append(errs, os.RemoveAll(e.PinRoot()))
	return errors.Join(errs...)
}

func deleteNS(name string) error {
	if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	return nil
}

// Sweep removes namespaces and pin directories left by test processes
// that no longer run.
func Sweep(log *slog.Logger) {
	dead := func(name string) bool {
		rest, ok := strings.CutPrefix(name, Prefix+"-")
		if !ok {
			return false
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err != nil {
			return false
		}
		_, err = os.Stat(fmt.Sprintf("/proc/%d", pid))
		return errors.Is(err, os.ErrNotExist)
	}
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, ent := range ents {
			if dead(ent.Name()) {
				log.Info("sweeping namespace of a dead test run", "netns", ent.Name())
				_ = deleteNS(ent.Name())
			}
		}
	}
	if ents, err := os.ReadDir("/sys/fs/bpf"); err == nil {
		for _, ent := range ents {
			if dead(ent.Name()) {
				_ = os.RemoveAll(filepath.Join("/sys/fs/bpf", ent.Name()))
			}
		}
	}
}

// Leftovers lists namespaces and pin directories of this process's
// environments that still exist (for tests of cleanup).
func Leftovers(id string) []string { return LeftoversWithPrefix(Prefix + "-" + id) }

// LeftoversWithPrefix lists namespaces and pin directories whose names
// start with prefix.
func LeftoversWithPrefix(prefix string) []string {
	var out []string
	for _, dir := range []string{netnsDir, "/sys/fs/bpf"} {
		ents, _ := os.ReadDir(dir)
		for _, ent := range ents {
			if strings.HasPrefix(ent.Name(), prefix) {
				out = append(out, filepath.Join(dir, ent.Name()))
			}
		}
	}
	return out
}

// RemoveWithPrefix deletes every namespace and pin directory whose name
// starts with prefix: the cleanup of last resort after a crash.
func RemoveWithPrefix(prefix string) error {
	var errs []error
	for _, p := range LeftoversWithPrefix(prefix) {
		if filepath.Dir(p) == netnsDir {
			errs = append(errs, deleteNS(filepath.Base(p)))
		} else {
			errs = append(errs, os.RemoveAll(p))
		}
	}
	return errors.Join(errs...)
}

// inNS runs fn on a thread inside ns. The thread is discarded afterwards
// rather than returned to the Go scheduler in a foreign namespace.
// InNamedNS runs fn in the named network namespace (one of
// /run/netns), on a thread of its own.
func InNamedNS(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("namespace %s: %w", name, err)
	}
	defer ns.Close()
	return inNS(ns, fn)
}

func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func newNamedNS(name string) (netns.NsHandle, error) {
	var h netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // NewNamed moves this thread; it is discarded
		var err error
		h, err = netns.NewNamed(name)
		errc <- err
	}()
	if err := <-errc; err != nil {
		return netns.None(), err
	}
	return h, nil
}

func withHandle(ns netns.NsHandle, fn func(*netlink.Handle) error) error {
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer nl.Close()
	return fn(nl)
}

// HostOptions tune a host's link.
type HostOptions struct {
	MTU int // default 1600 (room for IPIP); clients use 1500
	// TxChecksumOff disables TX checksum offload: clients on veth otherwise
	// send partial checksums that XDP forwards unfinished.
	TxChecksumOff bool
	// PeerXDPPass attaches a pass-through XDP program to the switch-side
	// peer, so that it receives the host's XDP_TX frames.
	PeerXDPPass bool
	Addr6       netip.Prefix
	// Gateway6 is, for AddHostBehind, the router side's IPv6 address on
	// the host's segment (with Addr6), and the host's IPv6 default route.
	Gateway6 netip.Prefix
}

// Host is one namespace with one link to the bridge.
type Host struct {
	Name   string
	Link   string // interface name inside the namespace
	Addr   netip.Prefix
	Addr6  netip.Prefix
	MAC    net.HardwareAddr
	ns     netns.NsHandle
	nsName string
	peer   string
	env    *Env
}

// newHost creates name's namespace and registers it for Close. Its link
// inside is "s…", the other end of its veth peerKind + "…".
func (e *Env) newHost(name string, addr netip.Prefix, peerKind string) (*Host, error) {
	if len(name) > 8 {
		return nil, fmt.Errorf("host name %q: at most 8 characters", name)
	}
	h := &Host{Name: name, Addr: addr, nsName: e.nsName(name), env: e,
		Link: "s" + e.short + name, peer: peerKind + e.short + name}
	ns, err := newNamedNS(h.nsName)
	if err != nil {
		return nil, fmt.Errorf("create namespace for %s: %w", name, err)
	}
	h.ns = ns
	e.mu.Lock()
	e.hosts = append(e.hosts, h)
	e.mu.Unlock()
	return h, nil
}

// AddHost creates a namespace joined to the bridge with the given address.
func (e *Env) AddHost(name string, addr netip.Prefix, opts HostOptions) (*Host, error) {
	if opts.MTU == 0 {
		opts.MTU = 1600
	}
	h, err := e.newHost(name, addr, "p")
	if err != nil {
		return nil, err
	}
	h.Addr6 = opts.Addr6

	if err := h.addLink(opts); err != nil {
		return nil, err
	}
	if err := h.plugPeer(opts.MTU); err != nil {
		return nil, err
	}
	if opts.PeerXDPPass {
		if err := inNS(e.sw, func() error { return attachPass(h.peer) }); err != nil {
			return nil, err
		}
	}
	if opts.TxChecksumOff {
		if err := h.txChecksumOff(); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// txChecksumOff turns off TX checksum offload on the host's link.
func (h *Host) txChecksumOff() error {
	err := h.Do(func() error {
		et, err := ethtool.NewEthtool()
		if err != nil {
			return err
		}
		defer et.Close()
		return et.Change(h.Link, map[string]bool{"tx-checksum-ip-generic": false})
	})
	if err != nil {
		return fmt.Errorf("turn off tx checksum offload on %s: %w", h.Link, err)
	}
	return nil
}

// addLink creates the host's veth (its peer in the switch namespace),
// gives it the host's addresses and brings it and lo up.
func (h *Host) addLink(opts HostOptions) error {
	return withHandle(h.ns, func(nl *netlink.Handle) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.Link, MTU: opts.MTU},
			PeerName: h.peer, PeerNamespace: netlink.NsFd(int(h.env.sw))}
		if err := nl.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", h.Link, err)
		}
		l, err := nl.LinkByName(h.Link)
		if err != nil {
			return err
		}
		h.MAC = l.Attrs().HardwareAddr
		if err := addAddrs(nl, l, []netip.Prefix{h.Addr, opts.Addr6}); err != nil {
			return err
		}
		lo, err := nl.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := nl.LinkSetUp(lo); err != nil {
			return err
		}
		return nl.LinkSetUp(l)
	})
}

// plugPeer puts the host's peer link on the switch's bridge.
func (h *Host) plugPeer(mtu int) error {
	return withHandle(h.env.sw, func(nl *netlink.Handle) error {
		p, err := nl.LinkByName(h.peer)
		if err != nil {
			return fmt.Errorf("find peer %s: %w", h.peer, err)
		}
		if err := nl.LinkSetMTU(p, mtu); err != nil {
			return err
		}
		br, err := nl.LinkByName("br0")
		if err != nil {
			return err
		}
		if err := nl.LinkSetMaster(p, br); err != nil {
			return fmt.Errorf("enslave %s: %w", h.peer, err)
		}
		return nl.LinkSetUp(p)
	})
}

// attachPass attaches xdp_pass natively to a link of the current
// namespace; it stays until the namespace goes.
func attachPass(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	var objs bpf.ToolsObjects
	if err := bpf.LoadToolsObjects(&objs, nil); err != nil {
		return fmt.Errorf("load tools: %w", err)
	}
	defer objs.Close()
	if err := netlink.LinkSetXdpFdWithFlags(l, objs.XdpPass.FD(), xdpFlagsDrvMode); err != nil {
		return fmt.Errorf("attach xdp_pass to %s: %w", name, err)
	}
	return nil
}

const xdpFlagsDrvMode = 1 << 2 // XDP_FLAGS_DRV_MODE

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Do runs fn inside the host's namespace.
func (h *Host) Do(fn func() error) error { return inNS(h.ns, fn) }

// NS is the host's namespace handle.
func (h *Host) NS() netns.NsHandle { return h.ns }

// NSName is the name of the host's namespace (for `ip netns exec`).
func (h *Host) NSName() string { return h.nsName }

// Netlink runs fn with a netlink handle in the host's namespace.
func (h *Host) Netlink(fn func(*netlink.Handle) error) error { return withHandle(h.ns, fn) }

// Sysctl writes a sysctl (path under /proc/sys, dotted or slashed) in the host's namespace.
func (h *Host) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return h.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, h.Name, err)
		}
		return nil
	})
}

// AddRoute routes dst via gw from this host; an invalid (zero) gw makes
// dst on-link: the host resolves its addresses with ARP/ND itself.
func (h *Host) AddRoute(dst netip.Prefix, gw netip.Addr) error {
	return h.Netlink(func(nl *netlink.Handle) error {
		l, err := nl.LinkByName(h.Link)
		if err != nil {
			return err
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixNet(dst), Gw: gw.AsSlice()}
		if !gw.IsValid() {
			r.Scope = netlink.SCOPE_LINK
		}
		if err := nl.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s via %s on %s: %w", dst, gw, h.Name, err)
		}
		return nil
	})
}

// Destroy tears the host's namespace down, and its link with it, like a
// machine that vanishes (fault injection). Processes running in it must be
// gone first, or they keep the namespace alive.
func (h *Host) Destroy() error {
	e := h.env
	e.mu.Lock()
	e.hosts = slices.DeleteFunc(e.hosts, func(x *Host) bool { return x == h })
	e.mu.Unlock()
	h.ns.Close()
	return deleteNS(h.nsName)
}

// SetLinkUp sets the host's link up or down (fault injection).
func (h *Host) SetLinkUp(up bool) error {
	return h.Netlink(func(nl *netlink.Handle) error {
		l, err := nl.LinkByName(h.Link)
		if err != nil {
			return err
		}
		if up {
			return nl.LinkSetUp(l)
		}
		return nl.LinkSetDown(l)
	})
}

// Dial connects from inside the host's namespace. laddr may be "".
func (h *Host) Dial(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		d := net.Dialer{}
		if laddr != "" {
			var err error
			switch network {
			case "udp", "udp4", "udp6":
				d.LocalAddr, err = net.ResolveUDPAddr(network, laddr)
			default:
				d.LocalAddr, err = net.ResolveTCPAddr(network, laddr)
			}
			if err != nil {
				return err
			}
		}
		var err error
		c, err = d.DialContext(ctx, network, raddr)
		return err
	})
	return c, err
}

// Listen opens a listener inside the host's namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	return inHost(h, func() (net.Listener, error) { return net.Listen(network, addr) })
}

// ListenPacket opens a packet socket inside the host's namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	return inHost(h, func() (net.PacketConn, error) { return net.ListenPacket(network, addr) })
}

// inHost runs fn inside h's namespace and returns what it made.
func inHost[T any](h *Host, fn func() (T, error)) (T, error) {
	var out T
	err := h.Do(func() error {
		var err error
		out, err = fn()
		return err
	})
	return out, err
}

// AttachLB loads and attaches the load balancer to the host's link, pinned
// under the environment's pin root.
func (h *Host) AttachLB(ctx context.Context, opts loader.Options) (*loader.Datapath, error) {
	opts.Iface = h.Link
	if opts.PinRoot == "" {
		opts.PinRoot = h.env.PinRoot()
	}
	if opts.Logger == nil {
		opts.Logger = h.env.log
	}
	var d *loader.Datapath
	err := h.Do(func() error {
		var err error
		d, err = loader.Load(ctx, opts)
		return err
	})
	return d, err
}

// AddVethPair creates two hosts joined directly by one veth pair, with no
// bridge between them (benchmarks).
func (e *Env) AddVethPair(a, b string, mtu int) (*Host, *Host, error) {
	if len(a) > 8 || len(b) > 8 {
		return nil, nil, fmt.Errorf("host names %q, %q: at most 8 characters", a, b)
	}
	if mtu == 0 {
		mtu = 1600
	}
	ha := &Host{Name: a, nsName: e.nsName(a), env: e, Link: "s" + e.short + a}
	hb := &Host{Name: b, nsName: e.nsName(b), env: e, Link: "s" + e.short + b}
	for _, h := range []*Host{ha, hb} {
		ns, err := newNamedNS(h.nsName)
		if err != nil {
			return nil, nil, fmt.Errorf("create namespace for %s: %w", h.Name, err)
		}
		h.ns = ns
		e.mu.Lock()
		e.hosts = append(e.hosts, h)
		e.mu.Unlock()
	}
	err := withHandle(ha.ns, func(nl *netlink.Handle) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ha.Link, MTU: mtu},
			PeerName: hb.Link, PeerNamespace: netlink.NsFd(int(hb.ns))}
		if err := nl.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", ha.Link, err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for _, h := range []*Host{ha, hb} {
		err := withHandle(h.ns, func(nl *netlink.Handle) error {
			l, err := nl.LinkByName(h.Link)
			if err != nil {
				return err
			}
			h.MAC = l.Attrs().HardwareAddr
			if err := nl.LinkSetMTU(l, mtu); err != nil {
				return err
			}
			return nl.LinkSetUp(l)
		})
		if err != nil {
			return nil, nil, err
		}
	}
	return ha, hb, nil
}

// Index is the ifindex of the host's link inside its namespace.
func (h *Host) Index() (int, error) {
	idx := 0
	err := h.Netlink(func(nl *netlink.Handle) error {
		l, err := nl.LinkByName(h.Link)
		if err != nil {
			return err
		}
		idx = l.Attrs().Index
		return nil
	})
	return idx, err
}

// Command runs a program inside the host's network namespace, so that
// everything it opens lives there. It enters only the network namespace
// (nsenter --net): `ip netns exec` would also give the program a private
// mount namespace with its own /sys, where BPF objects pinned to a bpffs
// mounted there vanish with the process.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netnsDir, h.nsName), "--", name}, args...)...)
}

// addAddrs adds the valid ones of ps to l, IPv6 ones without duplicate
// address detection (nothing else on a lab segment has them).
func addAddrs(nl *netlink.Handle, l netlink.Link, ps []netip.Prefix) error {
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		a := &netlink.Addr{IPNet: prefixNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := nl.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, l.Attrs().Name, err)
		}
	}
	return nil
}

// AddHostBehind creates a host on a segment of its own behind gw (a
// router host): one veth pair, this host's end with addr, gw's end
// (named "r…") with gwAddr. The host's default route points at gwAddr.
func (e *Env) AddHostBehind(gw *Host, name string, addr, gwAddr netip.Prefix, opts HostOptions) (*Host, error) {
	if opts.MTU == 0 {
		opts.MTU = 1500
	}
	h, err := e.newHost(name, addr, "r")
	if err != nil {
		return nil, err
	}
	err = withHandle(h.ns, func(nl *netlink.Handle) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.Link, MTU: opts.MTU}, PeerName: h.peer, PeerNamespace: netlink.NsFd(int(gw.ns))}
		if err := nl.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", h.Link, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.Addr6 = opts.Addr6
	for _, side := range []struct {
		ns    netns.NsHandle
		link  string
		addrs []netip.Prefix
		mac   *net.HardwareAddr
	}{{h.ns, h.Link, []netip.Prefix{addr, opts.Addr6}, &h.MAC}, {gw.ns, h.peer, []netip.Prefix{gwAddr, opts.Gateway6}, nil}} {
		err := withHandle(side.ns, func(nl *netlink.Handle) error {
			l, err := nl.LinkByName(side.link)
			if err != nil {
				return err
			}
			if side.mac != nil {
				*side.mac = l.Attrs().HardwareAddr
			}
			if err := addAddrs(nl, l, side.addrs); err != nil {
				return err
			}
			if lo, err := nl.LinkByName("lo"); err == nil {
				nl.LinkSetUp(lo)
			}
			return nl.LinkSetUp(l)
		})
		if err != nil {
			return nil, err
		}
	}
	if opts.Gateway6.IsValid() {
		if err := h.AddRoute(netip.MustParsePrefix("::/0"), opts.Gateway6.Addr()); err != nil {
			return nil, err
		}
	}
	if err := h.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), gwAddr.Addr()); err != nil {
		return nil, err
	}
	if opts.TxChecksumOff {
		if err := h.txChecksumOff(); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// OnSwitch runs fn in the switch's namespace, told the name of h's link
// there (a generator that sends h frames as if from the wire).
func (h *Host) OnSwitch(fn func(peer string) error) error {
	return inNS(h.env.sw, func() error { return fn(h.peer) })
}
