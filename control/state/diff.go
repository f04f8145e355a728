package state

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Diff lists, one line each, what differs between two normalised states.
func Diff(cur, next State) []string {
	var out []string
	byKey := func(s State) map[string]VIP {
		m := map[string]VIP{}
		for _, v := range s.VIPs {
			m[v.VIP] = v
		}
		return m
	}
	a, b := byKey(cur), byKey(next)
	js := func(v any) string { j, _ := json.Marshal(v); return string(j) }
	for _, v := range next.VIPs {
		old, ok := a[v.VIP]
		if !ok {
			out = append(out, fmt.Sprintf("+ vip %s (forward %s, %d backends)", v.VIP, v.Forward, len(v.Backends)))
			continue
		}
		ov, nv := old, v
		ov.Backends, nv.Backends = nil, nil
		if js(ov) != js(nv) {
			out = append(out, fmt.Sprintf("~ vip %s: %s -> %s", v.VIP, js(ov), js(nv)))
		}
		ob := map[string]Backend{}
		for _, be := range old.Backends {
			ob[be.Addr] = be
		}
		for _, be := range v.Backends {
			o, ok := ob[be.Addr]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("+ backend %s of %s", be.Addr, v.VIP))
			case js(o) != js(be):
				out = append(out, fmt.Sprintf("~ backend %s of %s: %s -> %s", be.Addr, v.VIP, js(o), js(be)))
			}
			delete(ob, be.Addr)
		}
		for addr := range ob {
			out = append(out, fmt.Sprintf("- backend %s of %s", addr, v.VIP))
		}
	}
	for _, v := range cur.VIPs {
		if _, ok := b[v.VIP]; !ok {
			out = append(out, fmt.Sprintf("- vip %s", v.VIP))
		}
	}
	return out
}

// KeepFailover carries epochs and primaries over a wholesale replacement
// (apply, restore): an epoch never goes backwards, and a file that names no
// primary does not depose the current one.
func KeepFailover(cur, next []VIP) []VIP {
	old := map[string]VIP{}
	for _, v := range cur {
		if k, err := ParseVIPKey(v.VIP); err == nil {
			old[FormatVIPKey(k)] = v
		}
	}
	out := slices.Clone(next) // nil stays nil: an empty snapshot restores as it was saved
	for i, v := range out {
		k, err := ParseVIPKey(v.VIP)
		if err != nil {
			continue
		}
		o, ok := old[FormatVIPKey(k)]
		if !ok {
			continue
		}
		if o.Epoch > v.Epoch {
			out[i].Epoch = o.Epoch
		}
		if v.Primary == "" && strings.EqualFold(v.Policy, PolicyFailover) {
			out[i].Primary = o.Primary
		}
	}
	return out
}
