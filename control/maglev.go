// Package control holds sluice's control plane: desired state, Maglev ring
// building, reconciliation into the data plane, failover, state and API.
package control

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"slices"
)

// MaglevBackend is one backend as Maglev sees it.
type MaglevBackend struct {
	// ID is the backend's identity (its address): offset and skip derive
	// from it and the seed, never from insertion order.
	ID string
	// Weight is the backend's share; 0 keeps it out of the ring.
	Weight uint32
	// Slot is the value the ring holds for this backend (its data-plane
	// backend index); it must not be 0, which means "no backend".
	Slot uint32
}

func maglevHash(seed uint64, salt byte, id string) uint64 {
	h := fnv.New64a()
	var b [9]byte
	binary.LittleEndian.PutUint64(b[:8], seed)
	b[8] = salt
	h.Write(b[:])
	h.Write([]byte(id))
	return h.Sum64()
}

// BuildMaglev builds a Maglev lookup table of size m (a prime) as in
// Eisenbud et al., NSDI 2016, Pseudocode 1: backends take turns claiming
// their next free slot in permutation order, and a backend of weight w takes
// w turns per round (weights are reduced by their GCD first). The result
// depends only on the set of backends and the seed: the same set gives a
// byte-identical table in any order, on any node. With no weighted backend,
// every slot is 0.
func BuildMaglev(backends []MaglevBackend, m uint32, seed uint64) ([]uint32, error) {
	if m < 2 || !isPrime(m) {
		return nil, fmt.Errorf("maglev table size %d: must be a prime", m)
	}
	bs := make([]MaglevBackend, 0, len(backends))
	seen := map[string]bool{}
	for _, b := range backends {
		if seen[b.ID] {
			return nil, fmt.Errorf("maglev: backend %q listed twice", b.ID)
		}
		seen[b.ID] = true
		if b.Slot == 0 {
			return nil, fmt.Errorf("maglev: backend %q has slot value 0", b.ID)
		}
		if b.Weight > 0 {
			bs = append(bs, b)
		}
	}
	table := make([]uint32, m)
	if len(bs) == 0 {
		return table, nil
	}
	if uint64(len(bs)) > uint64(m) {
		return nil, fmt.Errorf("maglev: %d backends do not fit a table of %d", len(bs), m)
	}
	slices.SortFunc(bs, func(a, b MaglevBackend) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	g := bs[0].Weight
	for _, b := range bs[1:] {
		g = gcd(g, b.Weight)
	}
	n := len(bs)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n) // j: how far along its permutation each backend is
	turns := make([]uint32, n)
	for i, b := range bs {
		offset[i] = maglevHash(seed, 1, b.ID) % uint64(m)
		skip[i] = maglevHash(seed, 2, b.ID)%uint64(m-1) + 1
		turns[i] = b.Weight / g
	}
	taken := make([]bool, m)
	filled := uint32(0)
	for filled < m {
		for i := 0; i < n && filled < m; i++ {
			for t := uint32(0); t < turns[i] && filled < m; t++ {
				c := (offset[i] + next[i]*skip[i]) % uint64(m)
				for taken[c] {
					next[i]++
					c = (offset[i] + next[i]*skip[i]) % uint64(m)
				}
				taken[c] = true
				table[c] = bs[i].Slot
				next[i]++
				filled++
			}
		}
	}
	return table, nil
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for i := uint32(2); uint64(i)*uint64(i) <= uint64(n); i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}
