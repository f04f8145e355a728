package loader

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// TestRingSwapObservedByNextPacket swaps a ring of one size for a ring of
// another and checks the very next packet follows the new ring, and that
// the ring reads back from the kernel exactly.
func TestRingSwapObservedByNextPacket(t *testing.T) {
	for _, sizes := range [][2]int{{13, 4099}, {4099, 65537}, {65537, 655373}, {655373, 13}} {
		t.Run(fmt.Sprintf("%d_to_%d", sizes[0], sizes[1]), func(t *testing.T) {
			f := newFixture(t, seed)
			fill := func(n int, b uint32) []uint32 {
				r := make([]uint32, n)
				for i := range r {
					r[i] = b
				}
				return r
			}
			f.replaceRing(t, vTCP, fill(sizes[0], 1))
			in := pkt4(t, client4, "10.0.0.100:80", synSeg)
			client := netip.MustParseAddrPort(client4)
			for i, want := range []uint32{1, 3} {
				if i == 1 {
					next := fill(sizes[1], 3)
					changed, err := f.d.ReplaceRing(vTCP, next)
					if err != nil || !changed {
						t.Fatalf("replace ring: changed=%v err=%v", changed, err)
					}
					got, err := f.d.Ring(vTCP)
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, next) {
						t.Fatalf("ring read back: %d slots, want %d", len(got), len(next))
					}
				}
				act, out := f.run(t, append([]byte(nil), in...))
				if act != xdpTx {
					t.Fatalf("packet %d: action %d", i, act)
				}
				if wantOut := expectIPIP4(t, in, backendAddr(want), want, client); string(out) != string(wantOut) {
					t.Fatalf("packet %d went to %x, want backend %d", i, out[:6], want)
				}
			}
		})
	}
}

func TestReplaceRingUnchangedWritesNothing(t *testing.T) {
	f := newFixture(t, seed)
	before, err := f.d.VIPs()
	if err != nil {
		t.Fatal(err)
	}
	changed, err := f.d.ReplaceRing(vTCP, f.rings[vTCP])
	if err != nil || changed {
		t.Fatalf("changed=%v err=%v, want no write", changed, err)
	}
	after, _ := f.d.VIPs()
	if before[vTCP] != after[vTCP] {
		t.Fatalf("vip entry changed: %+v -> %+v", before[vTCP], after[vTCP])
	}
}

func TestReplaceRingRejectsBadInput(t *testing.T) {
	f := newFixture(t, seed)
	before, _ := f.d.Ring(vTCP)
	for _, tc := range []struct {
		name  string
		slots []uint32
	}{
		{"empty", nil},
		{"not prime", make([]uint32, 12)},
		{"too big", make([]uint32, MaxRingSize+2)},
		{"backend out of range", []uint32{1, 2, MaxBackends}},
	} {
		if _, err := f.d.ReplaceRing(vTCP, tc.slots); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	after, _ := f.d.Ring(vTCP)
	if !slices.Equal(before, after) {
		t.Fatal("a refused ring changed the active ring")
	}
}

// TestSeedDeterminism: two independent data planes with the same seed send
// 500 flows to the same backends, exactly where the Go model of the hash
// says; a different seed moves some of them.
func TestSeedDeterminism(t *testing.T) {
	mapping := func(seedVal uint32) []uint32 {
		f := newFixture(t, seedVal)
		ring := make([]uint32, 4099)
		for i := range ring {
			ring[i] = uint32(i%3) + 1
		}
		f.replaceRing(t, vTCP, ring)
		var out []uint32
		for i := range 500 {
			client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(20000+i))
			in := pkt4(t, client.String(), "10.0.0.100:80", synSeg)
			act, frame := f.run(t, in)
			if act != xdpTx {
				t.Fatalf("flow %d: action %d", i, act)
			}
			b := uint32(frame[5]) // backendMAC(idx) ends in idx
			want := ring[flowHash(client, netip.MustParseAddrPort("10.0.0.100:80"), TCP, seedVal)%4099]
			if b != want {
				t.Fatalf("seed %#x flow %d: backend %d, hash model says %d", seedVal, i, b, want)
			}
			out = append(out, b)
		}
		return out
	}
	a, b, c := mapping(7), mapping(7), mapping(8)
	if !slices.Equal(a, b) {
		t.Fatal("same seed, different mapping")
	}
	moved := 0
	for i := range a {
		if a[i] != c[i] {
			moved++
		}
	}
	if moved < 200 {
		t.Fatalf("another seed moved only %d of 500 flows", moved)
	}
	t.Logf("seed change moved %d of 500 flows", moved)
}

func TestSetVIPRejectsBadInput(t *testing.T) {
	f := newFixture(t, seed)
	for _, tc := range []struct {
		k VIPKey
		v VIP
	}{
		{VIPKey{Proto: TCP}, VIP{ID: 20, Forward: ForwardDSR}},
		{VIPKey{netip.MustParseAddr("10.0.0.1"), 1, 47}, VIP{ID: 20, Forward: ForwardDSR}},
		{VIPKey{netip.MustParseAddr("10.0.0.1"), 1, TCP}, VIP{ID: MaxVIPs, Forward: ForwardDSR}},
		{VIPKey{netip.MustParseAddr("10.0.0.1"), 1, TCP}, VIP{ID: 20, Forward: 9}},
		{VIPKey{netip.MustParseAddr("::ffff:10.0.0.1"), 1, TCP}, VIP{ID: 20, Forward: ForwardDSR}},
	} {
		if _, err := f.d.SetVIP(tc.k, tc.v); err == nil {
			t.Errorf("SetVIP(%v, %+v) accepted", tc.k, tc.v)
		}
	}
	vips, _ := f.d.VIPs()
	if len(vips) != len(testVIPs) {
		t.Fatalf("vips = %d, want %d", len(vips), len(testVIPs))
	}
}

func TestDeleteVIPKeepsSharedAddress(t *testing.T) {
	f := newFixture(t, seed)
	if err := f.d.DeleteVIP(vTCP); err != nil {
		t.Fatal(err)
	}
	// 10.0.0.100 still has the UDP VIP: fragments to it are still dropped.
	if act, _ := f.run(t, fragment4(t, "10.0.0.100", 0, 100)); act != xdpDrop {
		t.Fatalf("fragment to remaining VIP address: action %d", act)
	}
	// ... and its deleted port is closed: still a VIP address.
	if act, _ := f.run(t, pkt4(t, client4, "10.0.0.100:80", synSeg)); act != xdpDrop {
		t.Fatalf("deleted VIP on a remaining VIP address: action %d, want drop", act)
	}
	if err := f.d.DeleteVIP(vUDP); err != nil {
		t.Fatal(err)
	}
	if act, _ := f.run(t, fragment4(t, "10.0.0.100", 0, 100)); act != xdpPass {
		t.Fatalf("fragment to former VIP address: action %d, want pass", act)
	}
}

func TestLoadBadInterface(t *testing.T) {
	testutil.Require(t)
	_, err := Load(context.Background(), Options{Iface: "sluice-nope0"})
	if err == nil || !strings.Contains(err.Error(), `interface "sluice-nope0"`) {
		t.Fatalf("err = %v, want a clear interface error", err)
	}
}

// TestNewFlowGuard: past the per-CPU new-flow limit, new flows are still
// forwarded by the ring but no longer written to the table.
func TestNewFlowGuard(t *testing.T) {
	f := newFixture(t, seed)
	if _, err := f.d.SetConfig(Config{Seed: seed, MAC: lbMAC, NewFlowLimit: 2}); err != nil {
		t.Fatal(err)
	}
	clients := []string{"192.0.2.1:1000", "192.0.2.2:1000", "192.0.2.3:1000"}
	for _, c := range clients {
		if act, _ := f.run(t, pkt4(t, c, "10.0.0.100:80", synSeg)); act != xdpTx {
			t.Fatalf("%s: action %d, want XDP_TX", c, act)
		}
	}
	for i, c := range clients {
		_, ok, err := f.d.LookupFlow(netip.MustParseAddrPort(c), netip.MustParseAddrPort("10.0.0.100:80"), TCP)
		if err != nil {
			t.Fatal(err)
		}
		if want := i < 2; ok != want {
			t.Errorf("flow %d tracked = %v, want %v", i, ok, want)
		}
	}
	checkStats(t, f, map[Stat]uint64{StatTxIPIP: 3, StatCTFloodSkip: 1}, 60)
}

// BenchmarkRingSwap times what a ring swap of the default size costs,
// part by part, side by side: ReplaceRing whole; reading the VIP table;
// reading the active ring back (VIP table and ring); filling an inner
// map; and the map-in-map update alone, which waits for an RCU grace
// period.
func BenchmarkRingSwap(b *testing.B) {
	f := newFixture(b, seed)
	const n = 65537
	rings := [2][]uint32{make([]uint32, n), make([]uint32, n)}
	for i := range n {
		rings[0][i], rings[1][i] = 1, 3
	}
	b.Run("ReplaceRing", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			if _, err := f.d.ReplaceRing(vTCP, rings[i%2]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read the vip table", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.d.readVIPs(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("read the active ring", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.d.Ring(vTCP); err != nil {
				b.Fatal(err)
			}
		}
	})
	inner, err := ebpf.NewMap(f.d.ringSpec(uint32(chunks(n))))
	if err != nil {
		b.Fatal(err)
	}
	defer inner.Close()
	keys := make([]uint32, chunks(n))
	packed := make([]bpf.LbRingChunk, chunks(n))
	for i := range keys {
		keys[i] = uint32(i)
	}
	b.Run("fill in place", func(b *testing.B) {
		for b.Loop() {
			if _, err := inner.BatchUpdate(keys, packed, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	spare := uint32(2*MaxVIPs - 1) // the second ring slot of a VIP id no test uses
	b.Run("map-in-map update", func(b *testing.B) {
		for b.Loop() {
			if err := f.d.objs.Rings.Update(spare, inner, ebpf.UpdateAny); err != nil {
				b.Fatal(err)
			}
		}
	})
	if err := f.d.objs.Rings.Delete(spare); err != nil {
		b.Fatal(err)
	}
}
