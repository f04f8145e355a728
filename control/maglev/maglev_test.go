package maglev

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

func backends(n int) []Backend {
	out := make([]Backend, n)
	for i := range out {
		out[i] = Backend{ID: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), Weight: 1, Slot: uint32(i + 1)}
	}
	return out
}

func counts(table []uint32) map[uint32]int {
	c := map[uint32]int{}
	for _, s := range table {
		c[s]++
	}
	return c
}

// TestMaglevBalanceProperty: unweighted, every backend owns ⌊M/N⌋ or ⌈M/N⌉ slots.
func TestMaglevBalanceProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := rapid.SampledFrom([]uint32{13, 251, 4099, 65537}).Draw(t, "m")
		n := rapid.IntRange(1, min(300, int(m))).Draw(t, "n")
		seed := rapid.Uint64().Draw(t, "seed")
		table, err := Build(backends(n), m, seed)
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := int(m)/n, (int(m)+n-1)/n
		c := counts(table)
		if len(c) != n {
			t.Fatalf("%d backends own slots, want %d", len(c), n)
		}
		for s, k := range c {
			if k < lo || k > hi {
				t.Fatalf("backend %d owns %d slots, want %d..%d", s, k, lo, hi)
			}
		}
	})
}

// TestMaglevDeterminism: the same set in any order gives the same table.
func TestMaglevDeterminism(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 100).Draw(t, "n")
		bs := backends(n)
		for i := range bs {
			bs[i].Weight = rapid.Uint32Range(0, 5).Draw(t, "w")
		}
		seed := rapid.Uint64().Draw(t, "seed")
		a, err := Build(bs, 4099, seed)
		if err != nil {
			t.Fatal(err)
		}
		shuffled := slices.Clone(bs)
		r := rand.New(rand.NewPCG(seed, 1))
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		b, err := Build(shuffled, 4099, seed)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(a, b) {
			t.Fatal("same backends in another order gave another table")
		}
	})
}

// TestMaglevWeights: a backend of weight w owns w/W of the table within w
// slots (one slot per weight unit).
func TestMaglevWeights(t *testing.T) {
	for _, ws := range [][]uint32{{2, 1, 1}, {3, 1}, {1, 2, 3, 4}, {10, 1, 1, 1}, {4, 2}} {
		bs := backends(len(ws))
		total := uint32(0)
		for i, w := range ws {
			bs[i].Weight = w
			total += w
		}
		const m = 65537
		table, err := Build(bs, m, 7)
		if err != nil {
			t.Fatal(err)
		}
		c := counts(table)
		for i, w := range ws {
			want := float64(m) * float64(w) / float64(total)
			got := float64(c[bs[i].Slot])
			if d := got - want; d > float64(w) || -d > float64(w) {
				t.Errorf("weights %v: backend %d (w=%d) owns %.0f slots, want %.1f ± %d", ws, i, w, got, want, w)
			}
		}
		t.Logf("weights %v: slots %v", ws, func() []int {
			var out []int
			for i := range ws {
				out = append(out, c[bs[i].Slot])
			}
			return out
		}())
	}
}

// TestMaglevResilience reproduces the paper's Fig. 12 setting: N=1000 at
// M=65537; when 1% and 3% of backends fail, at most 3% of the slots move
// between surviving backends.
func TestMaglevResilience(t *testing.T) {
	const m, n = 65537, 1000
	all := backends(n)
	before, err := Build(all, m, 42)
	if err != nil {
		t.Fatal(err)
	}
	for _, frac := range []float64{0.01, 0.03} {
		r := rand.New(rand.NewPCG(uint64(frac*1000), 9))
		failed := map[uint32]bool{}
		for len(failed) < int(frac*n) {
			failed[all[r.IntN(n)].Slot] = true
		}
		var alive []Backend
		for _, b := range all {
			if !failed[b.Slot] {
				alive = append(alive, b)
			}
		}
		after, err := Build(alive, m, 42)
		if err != nil {
			t.Fatal(err)
		}
		moved := 0
		for i := range before {
			if !failed[before[i]] && before[i] != after[i] {
				moved++
			}
		}
		share := float64(moved) / m
		t.Logf("%.0f%% of backends failed: %.2f%% of slots moved between survivors (%d)", 100*frac, 100*share, moved)
		if share > 0.03 {
			t.Errorf("%.0f%% failed: %.2f%% of slots moved between survivors, want ≤ 3%%", 100*frac, 100*share)
		}
	}
}

func TestMaglevRejectsBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		bs   []Backend
		m    uint32
	}{
		{"size not prime", backends(3), 65536},
		{"duplicate id", append(backends(2), Backend{ID: "10.0.0.0", Weight: 1, Slot: 9}), 13},
		{"slot zero", []Backend{{ID: "a", Weight: 1}}, 13},
		{"more backends than slots", backends(20), 13},
		{"size past 2^31 (a prime)", backends(3), 1<<31 + 11},
	} {
		if _, err := Build(tc.bs, tc.m, 1); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
	table, err := Build(nil, 13, 1)
	if err != nil || slices.ContainsFunc(table, func(s uint32) bool { return s != 0 }) {
		t.Fatalf("no backends: %v %v, want an all-zero table", table, err)
	}
}

// BenchmarkMaglev: build time as the reconciler builds, with one
// Builder reused from ring to ring.
func BenchmarkMaglev(b *testing.B) {
	for _, m := range []uint32{65537, 655373} {
		b.Run(fmt.Sprintf("M=%d,N=1000", m), func(b *testing.B) {
			bs := backends(1000)
			var mb Builder
			for b.Loop() {
				if _, err := mb.Build(bs, m, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMaglevFresh: the same builds into freshly allocated memory
// (Build), page faults included.
func BenchmarkMaglevFresh(b *testing.B) {
	for _, m := range []uint32{65537, 655373} {
		b.Run(fmt.Sprintf("M=%d,N=1000", m), func(b *testing.B) {
			bs := backends(1000)
			for b.Loop() {
				if _, err := Build(bs, m, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMaglevTailFillIsExact: the free-slot scan that finishes the table
// gives the same table as walking permutations to the end.
func TestMaglevTailFillIsExact(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := rapid.SampledFrom([]uint32{13, 251, 4099}).Draw(t, "m")
		n := rapid.IntRange(1, min(200, int(m))).Draw(t, "n")
		bs := backends(n)
		for i := range bs {
			bs[i].Weight = rapid.Uint32Range(1, 4).Draw(t, "w")
		}
		seed := rapid.Uint64().Draw(t, "seed")
		walk, err := new(Builder).build(bs, m, seed, 0)
		if err != nil {
			t.Fatal(err)
		}
		tail := rapid.IntRange(1, int(m)).Draw(t, "tail")
		fast, err := new(Builder).build(bs, m, seed, tail)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(walk, fast) {
			t.Fatalf("tail fill from %d free slots differs from the walk", tail)
		}
	})
}

// TestMaglevGolden: tables are byte-identical to those of earlier builds
// (digests recorded from commit b5d5a9f, before the 2026-11-26
// speed-ups). The nodes of an LB pair, or a fleet part-way through an
// upgrade, must build the same ring from the same backends, so a faster
// build may never change a table.
func TestMaglevGolden(t *testing.T) {
	for _, c := range []struct {
		m        uint32
		seed     uint64
		weighted bool
		sha256   string
	}{
		{65537, 0x1, false, "1d46b403a3e487e26e33bf1d945aab073c626a8f21ad77e8b733abab02a2554b"},
		{65537, 0x1, true, "541d68b559976872a8016617359eee758c06b7b1094a5b0e16a1766bfeedceb0"},
		{4099, 0xdeadbeef, true, "67173345f8ed2fe324f63546ee9d64378f541492e994fd745ac13acaa576c2d8"},
		{655373, 0x2a, false, "8fe267ea687bfaac013fb44d49c21cd3ba406a1edc57d2a1b9cb5c1df4cf0879"},
	} {
		bs := backends(1000)
		for i := range bs {
			if c.weighted {
				bs[i].Weight = uint32(1 + i%3)
			}
		}
		table, err := Build(bs, c.m, c.seed)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if err := binary.Write(h, binary.LittleEndian, table); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%x", h.Sum(nil)); got != c.sha256 {
			t.Errorf("M=%d seed=%#x weighted=%v: table digest %s, want %s", c.m, c.seed, c.weighted, got, c.sha256)
		}
	}
}

// TestBarrett: the divide-free reduction equals the % operator.
func TestBarrett(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		d := rapid.Uint64Range(1, 1<<32).Draw(t, "d")
		a := rapid.Uint64().Draw(t, "a")
		if got, want := newBarrett(d).mod(a), a%d; got != want {
			t.Fatalf("%d mod %d = %d, want %d", a, d, got, want)
		}
	})
	for _, a := range []uint64{0, 1, 65536, 65537, 1<<64 - 1, 1<<64 - 2} {
		for _, d := range []uint64{1, 2, 65536, 65537, 655373} {
			if got, want := newBarrett(d).mod(a), a%d; got != want {
				t.Fatalf("%d mod %d = %d, want %d", a, d, got, want)
			}
		}
	}
}

// maglevReference is the paper's Pseudocode 1, written plainly (with
// weighted turns), to check the optimised build against.
func maglevReference(bs []Backend, m uint32, seed uint64) []uint32 {
	var live []Backend
	for _, b := range bs {
		if b.Weight > 0 {
			live = append(live, b)
		}
	}
	slices.SortFunc(live, func(a, b Backend) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	table := make([]uint32, m)
	if len(live) == 0 {
		return table
	}
	g := live[0].Weight
	for _, b := range live {
		g = gcd(g, b.Weight)
	}
	next := make([]uint64, len(live))
	entry := make([]bool, m)
	filled := uint32(0)
	for {
		for i, b := range live {
			offset := maglevHash(seed, 1, b.ID) % uint64(m)
			skip := maglevHash(seed, 2, b.ID)%uint64(m-1) + 1
			for range b.Weight / g {
				c := (offset + next[i]*skip) % uint64(m)
				for entry[c] {
					next[i]++
					c = (offset + next[i]*skip) % uint64(m)
				}
				entry[c] = true
				table[c] = b.Slot
				next[i]++
				filled++
				if filled == m {
					return table
				}
			}
		}
	}
}

// TestMaglevMatchesReference: the optimised build gives exactly the table
// of the paper's pseudocode, both fresh (Build) and from one builder
// reused across sizes, backend sets and seeds (nothing of one build leaks
// into the next).
func TestMaglevMatchesReference(t *testing.T) {
	var mb Builder
	rapid.Check(t, func(t *rapid.T) {
		m := rapid.SampledFrom([]uint32{2, 13, 251, 4099, 65537}).Draw(t, "m")
		n := rapid.IntRange(0, min(300, int(m))).Draw(t, "n")
		bs := backends(n)
		for i := range bs {
			bs[i].Weight = rapid.Uint32Range(0, 4).Draw(t, "w")
		}
		seed := rapid.Uint64().Draw(t, "seed")
		want := maglevReference(bs, m, seed)
		got, err := Build(bs, m, seed)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatal("optimised table differs from the paper's pseudocode")
		}
		if got, err = mb.Build(bs, m, seed); err != nil || !slices.Equal(got, want) {
			t.Fatalf("reused builder: table differs from the paper's pseudocode (%v)", err)
		}
	})
}

// TestMaglevHashIsFNV1a pins the offset/skip hash: tables must stay
// byte-identical across versions and nodes.
func TestMaglevHashIsFNV1a(t *testing.T) {
	h := fnv.New64a()
	h.Write([]byte{7, 0, 0, 0, 0, 0, 0, 0, 2})
	h.Write([]byte("10.0.0.1"))
	if got := maglevHash(7, 2, "10.0.0.1"); got != h.Sum64() {
		t.Fatalf("maglevHash = %#x, FNV-1a = %#x", got, h.Sum64())
	}
}
