package api

import (
	"fmt"
	"strings"
	"time"
)

// Rate is a VIP's or a backend's traffic between two statuses.
type Rate struct {
	VIP     string  `json:"vip"`
	Backend string  `json:"backend,omitempty"`
	State   string  `json:"state,omitempty"`
	PPS     float64 `json:"pps"`
	BPS     float64 `json:"bps"`
	Share   float64 `json:"share"`
}

// Rates are the per-second rates between two statuses taken every apart:
// each VIP's, then each of its backends' with its share of the VIP's packets.
func Rates(prev, cur Status, every time.Duration) []Rate {
	old := map[string]uint64{}
	oldB := map[string]uint64{}
	for _, v := range prev.VIPs {
		old[v.VIP] = v.Packets
		oldB[v.VIP] = v.Bytes
		for _, b := range v.Backends {
			old[v.VIP+" "+b.Addr] = b.Packets
			oldB[v.VIP+" "+b.Addr] = b.Bytes
		}
	}
	sec := every.Seconds()
	var out []Rate
	for _, v := range cur.VIPs {
		vp := float64(v.Packets-old[v.VIP]) / sec
		out = append(out, Rate{VIP: v.VIP, PPS: vp, BPS: float64(v.Bytes-oldB[v.VIP]) / sec, Share: 1})
		for _, b := range v.Backends {
			k := v.VIP + " " + b.Addr
			p := float64(b.Packets-old[k]) / sec
			share := 0.0
			if vp > 0 {
				share = p / vp
			}
			out = append(out, Rate{VIP: v.VIP, Backend: b.Addr, State: b.State, PPS: p, BPS: float64(b.Bytes-oldB[k]) / sec, Share: share})
		}
	}
	return out
}

// ShareBar draws a share (0..1) as a bar of up to 30 blocks and a percentage.
func ShareBar(share float64) string {
	n := int(share*30 + 0.5)
	return strings.Repeat("█", max(0, min(30, n))) + fmt.Sprintf(" %5.1f%%", 100*share)
}
