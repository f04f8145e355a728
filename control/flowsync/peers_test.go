package flowsync

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sluicelb/sluice/loader"
)

// TestSixteenPeersNeverBusy: 17 nodes, each a peer of the 16 others,
// each keeping its push connections open: every write reaches every
// node and no connection is refused as busy. Before, a node took 8
// connections in all, so with 9 or more peers batches were refused.
func TestSixteenPeersNeverBusy(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := freePort(t)
	const n = 17
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}) }
	nodes := make([]*node, n)
	syncers := make([]*Syncer, n)
	for i := range n {
		nodes[i] = newNode(map[string]uint32{"10.0.0.11": 1})
		for j := range n {
			if j != i {
				nodes[i].peers = append(nodes[i].peers, addr(j))
			}
		}
	}
	for i := range n {
		syncers[i] = start(t, ctx, fmt.Sprintf("n%d", i), addr(i).String(), port, nodes[i])
	}
	for i := range n {
		eventually(t, fmt.Sprintf("n%d copied its peers", i), syncers[i].Copied)
	}
	vip := netip.MustParseAddrPort("10.77.1.100:80")
	src := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("10.78.0.1"), uint16(40000+i))
	}
	for i := range n {
		nodes[i].events <- loader.FlowEvent{Flow: loader.Flow{Src: src(i), Dst: vip, Proto: loader.TCP, Backend: 1}, At: loader.MonotonicNow()}
	}
	for i := range n {
		for j := range n {
			if j == i {
				continue // a node's own write is in its table already
			}
			eventually(t, fmt.Sprintf("n%d's flow on n%d", j, i), func() bool { _, ok := nodes[i].backend(src(j), vip); return ok })
		}
	}
	for i, s := range syncers {
		if busy := value(s.refused.WithLabelValues("busy")); busy != 0 {
			t.Errorf("n%d refused %v connections as busy", i, busy)
		}
	}
}

// TestJoinPastASilentPeer: a joining node with one peer that accepts
// and never answers (a stopped process) copies the live peer's table and
// is done within joinPatience and one copy; before, it tried peers one
// after another, each for a copy's 30 s timeout.
func TestJoinPastASilentPeer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	port := freePort(t)
	silent, err := net.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.20"), port).String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn // kept open, never read: a stopped peer
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	a := newNode(map[string]uint32{"10.0.0.11": 1})
	b := newNode(map[string]uint32{"10.0.0.11": 5})
	a.peers = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	b.peers = []netip.Addr{netip.MustParseAddr("127.0.0.20"), netip.MustParseAddr("127.0.0.1")}
	vip := netip.MustParseAddrPort("10.77.1.100:80")
	old := netip.MustParseAddrPort("10.78.0.1:40000")
	a.SetFlow(loader.Flow{Src: old, Dst: vip, Proto: loader.TCP, Backend: 1})
	start(t, ctx, "a", "127.0.0.1", port, a)
	joined := make(chan Joined, 1)
	began := time.Now()
	sb, err := New(Options{Node: "b", Key: key, Boot: 1, Local: netip.MustParseAddr("127.0.0.2"), Port: port}, b, b, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	sb.OnJoined = func(j Joined) { joined <- j }
	go sb.Run(ctx, b)
	select {
	case j := <-joined:
		took := time.Since(began)
		if got, ok := b.backend(old, vip); !ok || got != 5 {
			t.Fatalf("the live peer's flow on B: %d, %v", got, ok)
		}
		if len(j.GaveUp) != 1 || j.GaveUp[0] != netip.MustParseAddr("127.0.0.20") || took > joinPatience+3*time.Second {
			t.Fatalf("joined in %v (patience %v), gave up on %v", took, joinPatience, j.GaveUp)
		}
		t.Logf("joined in %v past a silent peer (patience %v)", took.Round(10*time.Millisecond), joinPatience)
	case <-time.After(joinPatience + 3*time.Second):
		t.Fatalf("no join within %v with one silent peer", joinPatience+3*time.Second)
	}
}
