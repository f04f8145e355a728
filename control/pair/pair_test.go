package pair

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/loader"
)

// host is a daemon as a pair sees it: a state and what was replicated
// into it.
type host struct {
	mu       sync.Mutex
	st       state.State
	rev      atomic.Uint64
	replicas chan state.State
}

func newHost(rev uint64) *host {
	h := &host{st: state.State{Revision: rev}, replicas: make(chan state.State, 16)}
	h.rev.Store(rev)
	return h
}

func (h *host) State() state.State {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st.Clone()
}
func (h *host) Revision() uint64 { return h.rev.Load() }
func (h *host) ApplyReplica(s state.State) error {
	h.mu.Lock()
	h.st = s
	h.mu.Unlock()
	h.rev.Store(s.Revision)
	h.replicas <- s
	return nil
}
func (h *host) UsableView() []string { return nil }
func (h *host) FlowBackend(netip.AddrPort, loader.Proto, netip.Addr) (uint32, bool) {
	return 0, false
}
func (h *host) BackendAddrs() map[uint32]netip.Addr { return map[uint32]netip.Addr{} }

// datapath is a data plane with no connection-table writes, on lo.
type datapath struct {
	ifi    *net.Interface
	closed chan struct{}
	once   sync.Once
}

func (d *datapath) Iface() *net.Interface           { return d.ifi }
func (d *datapath) FlowEvents() (FlowReader, error) { return d, nil }
func (d *datapath) Flows() ([]loader.Flow, error)   { return nil, nil }
func (d *datapath) SetFlow(loader.Flow) error       { return nil }
func (d *datapath) Close() error                    { d.once.Do(func() { close(d.closed) }); return nil }
func (d *datapath) Read(deadline time.Time) (loader.FlowEvent, error) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		timeout = time.After(time.Until(deadline))
	}
	select {
	case <-d.closed:
		return loader.FlowEvent{}, loader.ErrClosed
	case <-timeout:
		return loader.FlowEvent{}, os.ErrDeadlineExceeded
	}
}

// freePort is a port free for both UDP and TCP on loopback.
func freePort(t *testing.T) uint16 {
	t.Helper()
	for range 100 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		u.Close()
		if err == nil {
			l.Close()
			return uint16(port)
		}
	}
	t.Fatal("no free port")
	return 0
}

// node is one started pair with the events it reported.
type node struct {
	p     *Pair
	h     *host
	roles chan string
}

func startNode(t *testing.T, ctx context.Context, name string, prio uint8, port, peer uint16, h *host) *node {
	t.Helper()
	return startNodeAt(t, ctx, name, prio, port, peer, h, t.TempDir(), time.Now())
}

// startNodeAt starts a node whose state directory is dir and whose clock
// reads now.
func startNodeAt(t *testing.T, ctx context.Context, name string, prio uint8, port, peer uint16, h *host, dir string, now time.Time) *node {
	t.Helper()
	boot, err := state.NextBoot(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Peers: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), peer)},
		Priority: prio, Advert: 20 * time.Millisecond, Key: []byte("0123456789abcdef0123456789abcdef"), Node: name, Port: port, Boot: boot}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := New(opts, h, &datapath{ifi: lo, closed: make(chan struct{})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{p: p, h: h, roles: make(chan string, 64)}
	p.OnEvent = func(e api.Event) {
		if e.Kind == "ha" && e.To != "" {
			select {
			case n.roles <- e.To:
			default: // a test that stopped reading must not stall the pair
			}
		}
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return n
}

// drain forgets the role changes reported so far.
func (n *node) drain() {
	for {
		select {
		case <-n.roles:
		default:
			return
		}
	}
}

// waitRole waits for the node to report becoming role.
func (n *node) waitRole(t *testing.T, role string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case r := <-n.roles:
			if r == role {
				return
			}
		case <-timeout:
			t.Fatalf("%s never became %s (now %s)", n.p.Node(), role, n.p.Role())
		}
	}
}

// eventually polls cond, which adverts every 20 ms make true, for up to
// 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPairWithoutALab runs two pairs over loopback against hosts of the
// test's own: the higher priority becomes master, the backup pulls the
// master's state through ApplyReplica, and a handoff swaps the roles.
func TestPairWithoutALab(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pa, pb := freePort(t), freePort(t)
	a := startNode(t, ctx, "a", 200, pa, pb, newHost(3))
	b := startNode(t, ctx, "b", 100, pb, pa, newHost(0))
	a.waitRole(t, "master")
	// b may have become master too before it heard a; it steps down at a's
	// first advert.
	eventually(t, "b is backup", func() bool { return b.p.Role() == "backup" })
	if !a.p.IsCoordinator() || b.p.IsCoordinator() {
		t.Fatalf("roles a=%s b=%s, want master and backup", a.p.Role(), b.p.Role())
	}
	select {
	case s := <-b.h.replicas:
		if s.Revision != 3 {
			t.Fatalf("backup applied revision %d, want the master's 3", s.Revision)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the backup never pulled the master's state")
	}
	// The backup's next advert carries the revision it applied.
	eventually(t, "the master sees the backup at revision 3", func() bool {
		st := a.p.Status()
		return len(st.Peers) == 1 && st.Peers[0].Up && st.Peers[0].Revision == 3 && st.Peers[0].RevisionOK
	})
	if _, err := b.p.Handoff(); err == nil {
		t.Fatal("the backup accepted a handoff")
	}
	a.drain()
	b.drain()
	if _, err := a.p.Handoff(); err != nil {
		t.Fatal(err)
	}
	b.waitRole(t, "master")
	a.waitRole(t, "backup")
	if !b.p.IsCoordinator() || a.p.IsCoordinator() {
		t.Fatalf("after handoff a=%s b=%s, want backup and master", a.p.Role(), b.p.Role())
	}
}

// TestRestartWithClockSteppedBack: a peer restarted with its clock an hour
// behind is heard again at once, its adverts not refused as replays: its
// boot ID is a counter in its state directory, not the clock.
func TestRestartWithClockSteppedBack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pa, pb := freePort(t), freePort(t)
	a := startNode(t, ctx, "a", 200, pa, pb, newHost(1))
	dir := t.TempDir()
	bctx, stopB := context.WithCancel(ctx)
	b := startNodeAt(t, bctx, "b", 100, pb, pa, newHost(0), dir, time.Now())
	a.waitRole(t, "master")
	eventually(t, "a hears b", func() bool { st := a.p.Status(); return len(st.Peers) == 1 && st.Peers[0].Up })
	b.p.Stop()
	stopB()
	eventually(t, "a sees b gone", func() bool { return !a.p.Status().Peers[0].Up })
	b = startNodeAt(t, ctx, "b", 100, pb, pa, newHost(1), dir, time.Now().Add(-time.Hour))
	eventually(t, "a hears the restarted b", func() bool { return a.p.Status().Peers[0].Up })
	if n := a.p.Status().BadAdverts["replay"]; n != 0 {
		t.Fatalf("%d of b's adverts refused as replays after its restart", n)
	}
	_ = b
}
