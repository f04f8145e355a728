// Package maglev builds Maglev consistent-hashing tables (Eisenbud et al.,
// NSDI 2016): deterministic, weighted, and identical on every node that is
// given the same backends and seed. It imports only the standard library.
package maglev

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"slices"
	"strings"
)

// Backend is one backend as Maglev sees it.
type Backend struct {
	// ID is the backend's identity (its address): offset and skip derive
	// from it and the seed, never from insertion order.
	ID string
	// Weight is the backend's share; 0 keeps it out of the ring.
	Weight uint32
	// Slot is the value the ring holds for this backend (its data-plane
	// backend index); it must not be 0, which means "no backend".
	Slot uint32
}

// fnvPrime and fnvOffset are 64-bit FNV-1a's constants.
const (
	fnvPrime  = 1099511628211
	fnvOffset = 14695981039346656037
)

// maglevHash is 64-bit FNV-1a over (seed, salt, id), written out so that
// it allocates nothing.
func maglevHash(seed uint64, salt byte, id string) uint64 {
	return fnvString(fnvSalt(fnvSeed(seed), salt), id)
}

// fnvSeed is the FNV-1a state after the seed's eight bytes (little
// endian): the same for every backend, so a build computes it once.
func fnvSeed(seed uint64) uint64 {
	h := uint64(fnvOffset)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	for _, c := range b {
		h = (h ^ uint64(c)) * fnvPrime
	}
	return h
}

func fnvSalt(h uint64, salt byte) uint64 { return (h ^ uint64(salt)) * fnvPrime }

func fnvString(h uint64, id string) uint64 {
	for i := 0; i < len(id); i++ {
		h = (h ^ uint64(id[i])) * fnvPrime
	}
	return h
}

// Build builds a Maglev lookup table of size m (a prime) as in
// Eisenbud et al., NSDI 2016, Pseudocode 1: backends take turns claiming
// their next free slot in permutation order, and a backend of weight w takes
// w turns per round (weights are reduced by their GCD first). The result
// depends only on the set of backends and the seed: the same set gives a
// byte-identical table in any order, on any node. With no weighted backend,
// every slot is 0. The table is the caller's; a caller that builds many
// uses a Builder.
func Build(backends []Backend, m uint32, seed uint64) ([]uint32, error) {
	var b Builder
	return b.Build(backends, m, seed)
}

// Builder builds Maglev tables like Build, keeping its memory
// from one build to the next: the table of a 65537-slot ring is 256 KiB,
// and fresh memory costs a page fault per 4 KiB on first touch (about
// 0.2 ms per such table on our test VM, where the build itself takes about
// 1.2 ms). The zero value is ready to use; a builder is not safe for
// concurrent use.
type Builder struct {
	live  []Backend
	keys  []uint64
	order []uint32
	spare []uint32
	ws    []walker
	taken []uint64
	table []uint32
	free  []uint32
	inv   []uint64
}

// Build builds the table of backends, as Build does. The table it
// returns is valid until the next Build.
func (mb *Builder) Build(backends []Backend, m uint32, seed uint64) ([]uint32, error) {
	return mb.build(backends, m, seed, tailThreshold(m))
}

// sortByID returns the indices of backends in the order of their IDs
// (strings.Compare). Sorting 1000 IDs with a comparison sort took longer
// than hashing them, so it is a radix sort: each ID's first 16 bytes,
// zero-padded, form a 128-bit key, sorted least significant byte first
// (skipping bytes every key shares), and runs of equal keys, IDs that
// share 16 bytes, are then sorted by their full strings. Keys that differ
// order IDs as strings.Compare does: at the first differing byte, either
// both IDs have a byte there, which decides both orders, or one ID has
// ended (it reads as 0) and is a prefix of the other, which sorts it
// first either way.
func (mb *Builder) sortByID(backends []Backend) []uint32 {
	n := len(backends)
	mb.keys = resize(mb.keys, 2*n)
	keys := mb.keys // keys[2j], keys[2j+1]: backend j's high and low words
	mb.order, mb.spare = resize(mb.order, n), resize(mb.spare, n)
	order, spare := mb.order, mb.spare
	for j, b := range backends {
		var p [16]byte
		copy(p[:], b.ID)
		keys[2*j], keys[2*j+1] = binary.BigEndian.Uint64(p[:8]), binary.BigEndian.Uint64(p[8:])
		order[j] = uint32(j)
	}
	for pass := range 16 {
		word, shift := 1-pass/8, uint(pass%8)*8 // low word first
		var count [257]int
		for _, j := range order {
			count[byte(keys[2*int(j)+word]>>shift)+1]++
		}
		if slices.Contains(count[1:], n) {
			continue // every key has the same byte here
		}
		for v := 1; v < 257; v++ {
			count[v] += count[v-1]
		}
		for _, j := range order {
			v := byte(keys[2*int(j)+word] >> shift)
			spare[count[v]] = j
			count[v]++
		}
		order, spare = spare, order
	}
	for lo := 0; lo < n; {
		hi := lo + 1
		for hi < n && keys[2*order[hi]] == keys[2*order[lo]] && keys[2*order[hi]+1] == keys[2*order[lo]+1] {
			hi++
		}
		if hi-lo > 1 {
			slices.SortFunc(order[lo:hi], func(x, y uint32) int { return strings.Compare(backends[x].ID, backends[y].ID) })
		}
		lo = hi
	}
	return order
}

// tailThreshold is the count of free slots below which filling switches
// from walking permutations to scanning the free slots (see fillTail).
func tailThreshold(m uint32) int {
	return int(math.Sqrt(float64(m)) / 2)
}

// resize returns s with length n, reusing its array when large enough,
// and zeroed.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

func (mb *Builder) build(backends []Backend, m uint32, seed uint64, tail int) ([]uint32, error) {
	if m < 2 || m >= 1<<31 || !IsPrime(m) {
		return nil, fmt.Errorf("maglev table size %d: must be a prime below 2^31", m)
	}
	// Sorted by identity: the turn order, and duplicates become neighbours.
	order := mb.sortByID(backends)
	bs := mb.live[:0]
	for k, j := range order {
		b := backends[j]
		if k > 0 && backends[order[k-1]].ID == b.ID {
			return nil, fmt.Errorf("maglev: backend %q listed twice", b.ID)
		}
		if b.Slot == 0 {
			return nil, fmt.Errorf("maglev: backend %q has slot value 0", b.ID)
		}
		if b.Weight > 0 {
			bs = append(bs, b)
		}
	}
	mb.live = bs
	mb.table = resize(mb.table, int(m))
	table := mb.table
	if len(bs) == 0 {
		return table, nil
	}
	if uint64(len(bs)) > uint64(m) {
		return nil, fmt.Errorf("maglev: %d backends do not fit a table of %d", len(bs), m)
	}
	g := bs[0].Weight
	for _, b := range bs[1:] {
		g = gcd(g, b.Weight)
	}
	n := len(bs)
	// ws[i] walks backend i's permutation: permutation[j] = (offset +
	// j*skip) mod m, by addition so that no division happens in the fill
	// loop. One array of small structs keeps a claim's reads on one line.
	mb.ws = resize(mb.ws, n)
	ws := mb.ws
	hs := fnvSeed(seed)
	h1, h2 := fnvSalt(hs, 1), fnvSalt(hs, 2)
	modM, modM1 := newBarrett(uint64(m)), newBarrett(uint64(m-1))
	for i, b := range bs {
		ws[i] = walker{
			pos:   uint32(modM.mod(fnvString(h1, b.ID))),
			skip:  uint32(modM1.mod(fnvString(h2, b.ID)) + 1),
			slot:  b.Slot,
			turns: b.Weight / g,
		}
	}
	// A bitset stays in cache where []bool would not. It holds each slot
	// twice, at c and c+m, so that claimWide can test c+k*skip (< 2m)
	// without reducing it mod m first.
	mb.taken = resize(mb.taken, int((2*m+63)/64))
	taken := mb.taken
	// Claims go round the backends in order, backend i taking turns
	// turns; (i, t) is the next claim's place in that cycle. Claims probe
	// one candidate at a time while most slots are free, eight at a time
	// once most are taken, and the last few slots are found by scanning
	// the free ones (fillTail).
	i, t := 0, uint32(0)
	left := int(m)
	if crowded := max(int(m/wideFrom), tail); left > crowded {
		i, t = fillNarrow(table, taken, ws, m, i, t, left-crowded)
		left = crowded
	}
	mirror(taken, m)
	if left > tail {
		i, t = fillWide(table, taken, ws, m, i, t, left-tail)
	}
	if tail > 0 {
		mb.fillTail(table, taken, ws, m, i, t)
	}
	return table, nil
}

// wideFrom: claims test eight candidates at a time once fewer than
// m/wideFrom slots are free (a claim then expects wideFrom or more probes).
const wideFrom = 8

// fillNarrow makes count claims from backend i's turn t and returns the
// place of the claim after them. Each claim takes the first free slot at
// or after the walker's position in its permutation, and moves the
// walker past it. It marks only the first copy of the bitset (mirror
// makes the second).
func fillNarrow(table []uint32, taken []uint64, ws []walker, m uint32, i int, t uint32, count int) (int, uint32) {
	if uniform(ws) {
		return fillNarrowUniform(table, taken, ws, m, i, count), 0
	}
	for ; count > 0; count-- {
		w := &ws[i]
		skm := w.skip - m
		c := firstFree(taken, w.pos, skm, m)
		w.pos = subMod(c, skm, m)
		table[c] = w.slot
		if t++; t == w.turns {
			t = 0
			if i++; i == len(ws) {
				i = 0
			}
		}
	}
	return i, t
}

// fillNarrowUniform is fillNarrow when every backend takes one turn per
// round (equal weights, the common case): without the turn count, the
// loop keeps its variables in registers, about 10% faster.
func fillNarrowUniform(table []uint32, taken []uint64, ws []walker, m uint32, i int, count int) int {
	for ; count > 0; count-- {
		w := &ws[i]
		skm := w.skip - m
		c := firstFree(taken, w.pos, skm, m)
		w.pos = subMod(c, skm, m)
		table[c] = w.slot
		if i++; i == len(ws) {
			i = 0
		}
	}
	return i
}

// firstFree marks and returns the first free slot at or after c in the
// permutation with step sk; skm is sk-m (see subMod).
func firstFree(taken []uint64, c, skm, m uint32) uint32 {
	for {
		if word, bit := taken[c>>6], uint64(1)<<(c&63); word&bit == 0 {
			taken[c>>6] = word | bit
			return c
		}
		c = subMod(c, skm, m)
	}
}

func uniform(ws []walker) bool {
	for _, w := range ws {
		if w.turns != 1 {
			return false
		}
	}
	return true
}

// mirror copies the bitset's first copy (bits 0..m-1) to its second
// (bits m..2m-1).
func mirror(taken []uint64, m uint32) {
	q, r := int(m/64), m%64
	for k := 0; k <= q; k++ {
		word := taken[k]
		if k == q {
			word &= 1<<r - 1 // only slots below m; above them the second copy starts
		}
		taken[k+q] |= word << r
		if r != 0 && k+q+1 < len(taken) {
			taken[k+q+1] |= word >> (64 - r)
		}
	}
}

// fillWide is fillNarrow for a crowded table, with claimWide.
func fillWide(table []uint32, taken []uint64, ws []walker, m uint32, i int, t uint32, count int) (int, uint32) {
	for ; count > 0; count-- {
		w := &ws[i]
		table[w.claimWide(taken, m)] = w.slot
		if t++; t == w.turns {
			t = 0
			if i++; i == len(ws) {
				i = 0
			}
		}
	}
	return i, t
}

// claimWide claims for a crowded table, where a claim takes many probes:
// it tests the next eight candidates per step, computed from the position
// independently of each other, so that the loads overlap instead of
// waiting on a chain of additions, and one branch (well predicted: most
// steps find nothing) covers eight probes. It claims the slot firstFree
// would, the first free one in permutation order, marks it in both
// copies of the bitset and moves the walker past it.
func (w *walker) claimWide(taken []uint64, m uint32) uint32 {
	var st [8]uint32 // st[k] = k*skip mod m
	sk := w.skip
	st[1] = sk
	st[2] = addMod(sk, sk, m)
	st[3] = addMod(st[2], sk, m)
	st[4] = addMod(st[2], st[2], m)
	st[5] = addMod(st[4], sk, m)
	st[6] = addMod(st[4], st[2], m)
	st[7] = addMod(st[4], st[3], m)
	sk8m := addMod(st[4], st[4], m) - m // see subMod
	c := w.pos
	for {
		// c+st[k] < 2m: the bitset's second copy answers for the
		// slots past the wrap.
		free := isFree(taken, c) |
			isFree(taken, c+st[1])<<1 |
			isFree(taken, c+st[2])<<2 |
			isFree(taken, c+st[3])<<3 |
			isFree(taken, c+st[4])<<4 |
			isFree(taken, c+st[5])<<5 |
			isFree(taken, c+st[6])<<6 |
			isFree(taken, c+st[7])<<7
		if free != 0 {
			c = addMod(c, st[bits.TrailingZeros32(free)&7], m)
			take(taken, c, m)
			w.pos = addMod(c, sk, m)
			return c
		}
		c = subMod(c, sk8m, m)
	}
}

// take marks slot c taken, in both copies.
func take(taken []uint64, c, m uint32) {
	taken[c>>6] |= 1 << (c & 63)
	c += m
	taken[c>>6] |= 1 << (c & 63)
}

// isFree is 1 when slot c is free, else 0.
func isFree(taken []uint64, c uint32) uint32 {
	var f uint32
	if taken[c>>6]&(1<<(c&63)) == 0 {
		f = 1
	}
	return f
}

// walker is one backend's place in its permutation.
type walker struct {
	pos   uint32 // next candidate slot
	skip  uint32
	slot  uint32 // the value its slots hold
	turns uint32 // claims per round (weight / gcd of weights)
}

// fillTail finishes the table when few slots are free. Walking a
// permutation then costs about m/free probes per claim; instead, for each
// claim it computes, for every free slot, how many steps along the
// claiming backend's permutation that slot lies ahead, and takes the
// nearest. Every slot the backend walked past is taken (slots are never
// freed), so the nearest free slot is exactly the one the walk would reach:
// the table is identical, only faster to build.
func (mb *Builder) fillTail(table []uint32, taken []uint64, ws []walker, m uint32, i int, t uint32) {
	free := mb.free[:0]
	for k, word := range taken {
		for f := ^word; f != 0; f &= f - 1 {
			if c := uint32(k*64 + bits.TrailingZeros64(f)); c < m {
				free = append(free, c)
			}
		}
	}
	mb.free = free
	n := len(ws)
	// Inverses of the skips, computed when a backend first claims here:
	// at most one per free slot, not one per backend.
	mb.inv = resize(mb.inv, n)
	inv := mb.inv
	bm := newBarrett(uint64(m))
	mod := bm.mod
	for len(free) > 0 {
		w := &ws[i]
		best, bestJ := 0, uint64(m)
		p := uint64(w.pos)
		if inv[i] == 0 { // no inverse is 0
			inv[i] = modInverse(uint64(w.skip), bm)
		}
		iv := inv[i]
		for k, c := range free {
			// d = (c - p) mod m: steps from the next candidate, times
			// skip. The wrap is computed, not branched on: it is taken
			// at random.
			d := uint64(c) + uint64(m) - p
			d -= uint64(m) & uint64(int64(uint64(m)-1-d)>>63)
			j := mod(d * iv)
			if j < bestJ {
				best, bestJ = k, j
			}
		}
		c := free[best]
		free[best] = free[len(free)-1]
		free = free[:len(free)-1]
		table[c] = w.slot
		w.pos = addMod(c, w.skip, m)
		if t++; t == w.turns {
			t = 0
			if i++; i == n {
				i = 0
			}
		}
	}
}

// barrett reduces 64-bit values modulo d without a divide (a divide costs
// tens of cycles): the quotient estimate a*floor((2^64-1)/d)/2^64 is at
// most one short, so one conditional subtraction makes the result exact.
type barrett struct{ d, recip uint64 }

func newBarrett(d uint64) barrett { return barrett{d: d, recip: ^uint64(0) / d} }

func (b barrett) mod(a uint64) uint64 {
	q, _ := bits.Mul64(a, b.recip)
	r := a - q*b.d
	if r >= b.d {
		r -= b.d
	}
	return r
}

// addMod returns (c + sk) mod m for c, sk < m < 2^31, without a branch
// (the wrap is taken at random, so a branch would mispredict, and the
// compiler keeps an if in a loop as a branch): c+sk-m is negative exactly
// when no wrap is due, and its sign, spread into a mask, adds m back.
func addMod(c, sk, m uint32) uint32 { return subMod(c, sk-m, m) }

// subMod is addMod with skm = sk-m (mod 2^32) given: a loop that steps by
// a fixed skip computes it once, and each step is four operations long.
func subMod(c, skm, m uint32) uint32 {
	d := int32(c + skm)
	return uint32(d + int32(m)&(d>>31))
}

// modInverse returns x^-1 mod m for prime m (Fermat: x^(m-2)), with the
// divide-free reduction.
func modInverse(x uint64, mod barrett) uint64 {
	r, e := uint64(1), mod.d-2
	for b := mod.mod(x); e > 0; e >>= 1 {
		if e&1 == 1 {
			r = mod.mod(r * b)
		}
		b = mod.mod(b * b)
	}
	return r
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// IsPrime reports whether n is prime: Maglev table sizes must be. It is
// the project's one primality test (math/big's test is exact below 2^64).
func IsPrime(n uint32) bool { return big.NewInt(int64(n)).ProbablyPrime(0) }
