package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
)

func (d *Daemon) drillDir() string { return filepath.Join(d.opts.StateDir, "drills") }

// counters samples every backend's packet counter of one VIP.
func (d *Daemon) counters(vip string) (map[string]uint64, time.Time, error) {
	st, err := d.Status()
	if err != nil {
		return nil, time.Time{}, err
	}
	out := map[string]uint64{}
	for _, v := range st.VIPs {
		if v.VIP == vip {
			for _, b := range v.Backends {
				out[b.Addr] = b.Packets
			}
		}
	}
	return out, time.Now(), nil
}

func (d *Daemon) backendStates(vip string) map[string]string {
	st, _ := d.Status()
	out := map[string]string{}
	for _, v := range st.VIPs {
		if v.VIP == vip {
			for _, b := range v.Backends {
				out[b.Addr] = b.State
			}
		}
	}
	return out
}

// Drill records a baseline, performs the action through the normal path,
// holds and measures, restores the original state, and reports.
func (d *Daemon) Drill(ctx context.Context, req api.DrillRequest) (api.DrillReport, error) {
	if err := d.mayChange(); err != nil {
		return api.DrillReport{}, err
	}
	k, err := state.ParseVIPKey(req.VIP)
	if err != nil {
		return api.DrillReport{}, err
	}
	hold, maxApply := 10*time.Second, 250*time.Millisecond
	if req.Hold != "" {
		if hold, err = time.ParseDuration(req.Hold); err != nil || hold <= 0 {
			return api.DrillReport{}, fmt.Errorf("hold %q: want a positive duration", req.Hold)
		}
	}
	if req.MaxApply != "" {
		if maxApply, err = time.ParseDuration(req.MaxApply); err != nil || maxApply <= 0 {
			return api.DrillReport{}, fmt.Errorf("max_apply %q: want a positive duration", req.MaxApply)
		}
	}
	st := d.State()
	i := st.FindVIP(k)
	if i < 0 {
		return api.DrillReport{}, state.NotFound("vip %s: no such vip", state.FormatVIPKey(k))
	}
	v := st.VIPs[i]
	var target string
	switch req.Action {
	case "disable-backend", "promote":
		a, err := netip.ParseAddr(req.Addr)
		if err != nil || v.FindBackend(a) < 0 {
			return api.DrillReport{}, fmt.Errorf("action %s: %q is not a backend of %s", req.Action, req.Addr, v.VIP)
		}
		target = a.String()
		if req.Action == "promote" && v.Policy != state.PolicyFailover {
			return api.DrillReport{}, fmt.Errorf("action promote: %s is not a failover VIP", v.VIP)
		}
	case "fail-primary":
		if v.Policy != state.PolicyFailover || v.Primary == "" {
			return api.DrillReport{}, fmt.Errorf("action fail-primary: %s has no primary", v.VIP)
		}
		target = v.Primary
	default:
		return api.DrillReport{}, fmt.Errorf("action %q: want disable-backend, fail-primary or promote", req.Action)
	}
	rep := api.DrillReport{ID: time.Now().UTC().Format("20060102T150405.000Z"), VIP: v.VIP, Action: req.Action, Target: target,
		Started: time.Now(), MaxApply: maxApply.String(), NotRestored: []string{}, Failures: []string{}}
	step := func(format string, args ...any) {
		rep.Steps = append(rep.Steps, api.DrillStep{Time: time.Now(), What: fmt.Sprintf(format, args...)})
	}
	d.events.Add(api.Event{Kind: "drill", VIP: v.VIP, Backend: target, Reason: "drill " + req.Action + " started"})

	// 1. baseline
	before := d.backendStates(v.VIP)
	base := min(hold/2, 2*time.Second)
	c0, t0, err := d.counters(v.VIP)
	if err != nil {
		return rep, err
	}
	select {
	case <-ctx.Done():
		return rep, ctx.Err()
	case <-time.After(base):
	}
	c1, t1, _ := d.counters(v.VIP)
	step("baseline measured over %v", t1.Sub(t0).Round(time.Millisecond))

	// 2. the action, as a real change
	origPrimary := v.Primary
	actStart := time.Now()
	switch req.Action {
	case "disable-backend":
		_, err = d.Change(ctx, "drill: disable "+target, func(s *state.State) error {
			s.VIPs[s.FindVIP(k)].Backends[s.VIPs[s.FindVIP(k)].FindBackend(netip.MustParseAddr(target))].Disabled = true
			return nil
		})
		rep.CommitSeconds, rep.ApplySeconds = d.appliedSince(actStart)
	case "fail-primary":
		_, err = d.Change(ctx, "drill: fail primary "+target, func(s *state.State) error {
			s.VIPs[s.FindVIP(k)].Backends[s.VIPs[s.FindVIP(k)].FindBackend(netip.MustParseAddr(target))].Disabled = true
			return nil
		})
		rep.CommitSeconds, rep.ApplySeconds = d.appliedSince(actStart)
		// The coordinator promotes a replica through the normal path; wait
		// for its event (it follows the commit of the new primary).
		deadline := time.Now().Add(hold)
		promoted := false
		for !promoted && time.Now().Before(deadline) {
			for _, e := range d.events.List() {
				if e.Kind == "failover" && e.VIP == v.VIP && e.Time.After(actStart) && strings.HasPrefix(e.Reason, "promoted") {
					rep.HookOutput = e.Reason
					step("coordinator promoted %s", e.To)
					promoted = true
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
		if !promoted {
			rep.Failures = append(rep.Failures, "no replica was promoted within the hold")
		}
	case "promote":
		var res api.PromoteResult
		res, err = d.Promote(ctx, v.VIP, target)
		rep.CommitSeconds, rep.ApplySeconds = d.appliedSince(actStart)
		rep.HookOutput, rep.HookTime = strings.TrimSpace(res.HookOutput), res.HookTime
	}
	if err != nil {
		rep.Failures = append(rep.Failures, "action: "+err.Error())
	}
	step("action %s %s committed in %v, in the maps %v later", req.Action, target,
		time.Duration(rep.CommitSeconds*float64(time.Second)).Round(time.Microsecond),
		time.Duration(rep.ApplySeconds*float64(time.Second)).Round(time.Microsecond))

	// 3. hold and measure
	c2, t2, _ := d.counters(v.VIP)
	select {
	case <-ctx.Done():
	case <-time.After(hold):
	}
	c3, t3, _ := d.counters(v.VIP)
	after := d.backendStates(v.VIP)
	step("held for %v", t3.Sub(t2).Round(time.Millisecond))
	var baseTotal, holdTotal float64
	for _, b := range v.Backends {
		baseTotal += float64(c1[b.Addr] - c0[b.Addr])
		holdTotal += float64(c3[b.Addr] - c2[b.Addr])
	}
	rep.OthersHealthy = true
	for _, b := range v.Backends {
		db := api.DrillBackend{Addr: b.Addr, BaselinePPS: float64(c1[b.Addr]-c0[b.Addr]) / t1.Sub(t0).Seconds(),
			DuringPPS: float64(c3[b.Addr]-c2[b.Addr]) / t3.Sub(t2).Seconds(), DuringPackets: c3[b.Addr] - c2[b.Addr],
			StateBefore: before[b.Addr], StateAfter: after[b.Addr]}
		if baseTotal > 0 {
			db.BaselineShare = float64(c1[b.Addr]-c0[b.Addr]) / baseTotal
		}
		if holdTotal > 0 {
			db.DuringShare = float64(c3[b.Addr]-c2[b.Addr]) / holdTotal
		}
		if b.Addr != target && before[b.Addr] == string(health.Up) && after[b.Addr] != string(health.Up) {
			rep.OthersHealthy = false
		}
		rep.Backends = append(rep.Backends, db)
	}
	sort.Slice(rep.Backends, func(i, j int) bool { return rep.Backends[i].Addr < rep.Backends[j].Addr })

	// 4. restore the original state
	switch req.Action {
	case "disable-backend", "fail-primary":
		if _, err := d.Change(ctx, "drill: restore "+target, func(s *state.State) error {
			s.VIPs[s.FindVIP(k)].Backends[s.VIPs[s.FindVIP(k)].FindBackend(netip.MustParseAddr(target))].Disabled = false
			return nil
		}); err != nil {
			rep.NotRestored = append(rep.NotRestored, fmt.Sprintf("%s still disabled: %v", target, err))
		}
	}
	if origPrimary != "" {
		// Put the original primary back (a promotion: the epoch rises).
		deadline := time.Now().Add(10 * time.Second)
		for {
			s := d.State()
			cur := s.VIPs[s.FindVIP(k)].Primary
			if cur == origPrimary {
				break
			}
			if _, err := d.Promote(ctx, v.VIP, origPrimary); err == nil {
				continue
			} else if time.Now().After(deadline) {
				rep.NotRestored = append(rep.NotRestored, fmt.Sprintf("primary is %s, was %s: %v", cur, origPrimary, err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	step("original state restored")
	rep.Finished = time.Now()
	if time.Duration(rep.ApplySeconds*float64(time.Second)) > maxApply {
		rep.Failures = append(rep.Failures, fmt.Sprintf("apply took %v, more than --max-apply %v",
			time.Duration(rep.ApplySeconds*float64(time.Second)).Round(time.Microsecond), maxApply))
	}
	if !rep.OthersHealthy {
		rep.Failures = append(rep.Failures, "another backend went down during the drill")
	}
	if len(rep.NotRestored) > 0 {
		rep.Failures = append(rep.Failures, "not everything was restored")
	}
	rep.Pass = len(rep.Failures) == 0
	result := "pass"
	if !rep.Pass {
		result = "fail"
	}
	d.metrics.drills.WithLabelValues(result).Inc()
	d.events.Add(api.Event{Kind: "drill", VIP: v.VIP, Backend: target, Reason: fmt.Sprintf("drill %s finished: %s %s", req.Action, result, strings.Join(rep.Failures, "; "))})
	if err := os.MkdirAll(d.drillDir(), 0o700); err == nil {
		raw, _ := json.MarshalIndent(rep, "", "  ")
		if err := state.WriteFileAtomic(filepath.Join(d.drillDir(), rep.ID+".json"), raw, 0o600); err != nil {
			d.log.Error("keep drill report", "err", err)
		}
	}
	return rep, nil
}

// appliedSince splits the time since start of the last change into
// commit (start -> committed) and apply (committed -> maps written).
func (d *Daemon) appliedSince(start time.Time) (float64, float64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lastCommit.Before(start) || d.lastApplied.Before(d.lastCommit) {
		return time.Since(start).Seconds(), 0
	}
	return d.lastCommit.Sub(start).Seconds(), d.lastApplied.Sub(d.lastCommit).Seconds()
}

// Drills lists kept drill reports, oldest first.
func (d *Daemon) Drills() ([]api.DrillReport, error) {
	ents, err := os.ReadDir(d.drillDir())
	if errors.Is(err, os.ErrNotExist) {
		return []api.DrillReport{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []api.DrillReport{}
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(d.drillDir(), e.Name()))
		if err != nil {
			continue
		}
		var r api.DrillReport
		if json.Unmarshal(raw, &r) == nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}
