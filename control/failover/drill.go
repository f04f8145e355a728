package failover

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

// counters samples every backend's packet counter of one VIP.
func (m *Manager) counters(vip string) (map[string]uint64, time.Time, error) {
	st, err := m.o.Core.Status()
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

func (m *Manager) backendStates(vip string) map[string]string {
	st, _ := m.o.Core.Status()
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
func (m *Manager) Drill(ctx context.Context, req api.DrillRequest) (api.DrillReport, error) {
	if err := m.o.Coord.MayCoordinate(); err != nil {
		return api.DrillReport{}, err
	}
	dr, err := m.newDrill(req)
	if err != nil {
		return api.DrillReport{}, err
	}
	m.o.Event(api.Event{Kind: "drill", VIP: dr.v.VIP, Backend: dr.target, Reason: "drill " + req.Action + " started"})
	if err := dr.baseline(ctx); err != nil {
		return dr.rep, err
	}
	dr.act(ctx)
	dr.measure(ctx)
	dr.restore(ctx)
	dr.finish()
	return dr.rep, nil
}

// drill is one drill in progress.
type drill struct {
	m              *Manager
	req            api.DrillRequest
	k              state.VIPKey
	v              state.VIP
	target         string
	hold, maxApply time.Duration
	rep            api.DrillReport
	before         map[string]string // backend states before the action
	c0, c1         map[string]uint64 // baseline counters
	t0, t1         time.Time
}

// newDrill checks a drill request against the state, naming the bad field.
func (m *Manager) newDrill(req api.DrillRequest) (*drill, error) {
	k, err := state.ParseVIPKey(req.VIP)
	if err != nil {
		return nil, err
	}
	dr := &drill{m: m, req: req, k: k, hold: 10 * time.Second, maxApply: 250 * time.Millisecond}
	if req.Hold != "" {
		if dr.hold, err = time.ParseDuration(req.Hold); err != nil || dr.hold <= 0 {
			return nil, fmt.Errorf("hold %q: want a positive duration", req.Hold)
		}
	}
	if req.MaxApply != "" {
		if dr.maxApply, err = time.ParseDuration(req.MaxApply); err != nil || dr.maxApply <= 0 {
			return nil, fmt.Errorf("max_apply %q: want a positive duration", req.MaxApply)
		}
	}
	st := m.o.Core.State()
	i, err := st.LookupVIP(k)
	if err != nil {
		return nil, err
	}
	dr.v = st.VIPs[i]
	if dr.target, err = drillTarget(req, dr.v); err != nil {
		return nil, err
	}
	dr.rep = api.DrillReport{ID: time.Now().UTC().Format("20060102T150405.000Z"), VIP: dr.v.VIP, Action: req.Action, Target: dr.target,
		Started: time.Now(), MaxApply: dr.maxApply.String(), NotRestored: []string{}, Failures: []string{}}
	return dr, nil
}

// drillTarget is the backend a drill acts on.
func drillTarget(req api.DrillRequest, v state.VIP) (string, error) {
	switch req.Action {
	case "disable-backend", "promote":
		a, err := netip.ParseAddr(req.Addr)
		if err != nil || v.FindBackend(a) < 0 {
			return "", fmt.Errorf("action %s: %q is not a backend of %s", req.Action, req.Addr, v.VIP)
		}
		if req.Action == "promote" && v.Policy != state.PolicyFailover {
			return "", fmt.Errorf("action promote: %s is not a failover VIP", v.VIP)
		}
		return a.String(), nil
	case "fail-primary":
		if v.Policy != state.PolicyFailover || v.Primary == "" {
			return "", fmt.Errorf("action fail-primary: %s has no primary", v.VIP)
		}
		return v.Primary, nil
	}
	return "", fmt.Errorf("action %q: want disable-backend, fail-primary or promote", req.Action)
}

func (dr *drill) step(format string, args ...any) {
	dr.rep.Steps = append(dr.rep.Steps, api.DrillStep{Time: time.Now(), What: fmt.Sprintf(format, args...)})
}

// baseline measures every backend's rate before the action.
func (dr *drill) baseline(ctx context.Context) error {
	dr.before = dr.m.backendStates(dr.v.VIP)
	base := min(dr.hold/2, 2*time.Second)
	var err error
	if dr.c0, dr.t0, err = dr.m.counters(dr.v.VIP); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(base):
	}
	dr.c1, dr.t1, _ = dr.m.counters(dr.v.VIP)
	dr.step("baseline measured over %v", dr.t1.Sub(dr.t0).Round(time.Millisecond))
	return nil
}

// setDisabled commits the target's disabled flag.
func (dr *drill) setDisabled(ctx context.Context, what string, disabled bool) error {
	_, err := dr.m.o.Core.Change(ctx, what, state.SetDisabled(dr.k, netip.MustParseAddr(dr.target), disabled))
	return err
}

// act performs the action as a real change and times it.
func (dr *drill) act(ctx context.Context) {
	m, rep := dr.m, &dr.rep
	actStart := time.Now()
	var err error
	switch dr.req.Action {
	case "disable-backend":
		err = dr.setDisabled(ctx, "drill: disable "+dr.target, true)
		rep.CommitSeconds, rep.ApplySeconds = m.appliedSince(actStart)
	case "fail-primary":
		err = dr.setDisabled(ctx, "drill: fail primary "+dr.target, true)
		rep.CommitSeconds, rep.ApplySeconds = m.appliedSince(actStart)
		dr.awaitPromotion(actStart)
	case "promote":
		var res api.PromoteResult
		res, err = m.Promote(ctx, dr.v.VIP, dr.target)
		rep.CommitSeconds, rep.ApplySeconds = m.appliedSince(actStart)
		rep.HookOutput, rep.HookTime = strings.TrimSpace(res.HookOutput), res.HookTime
	}
	if err != nil {
		rep.Failures = append(rep.Failures, "action: "+err.Error())
	}
	dr.step("action %s %s committed in %v, in the maps %v later", dr.req.Action, dr.target,
		time.Duration(rep.CommitSeconds*float64(time.Second)).Round(time.Microsecond),
		time.Duration(rep.ApplySeconds*float64(time.Second)).Round(time.Microsecond))
}

// awaitPromotion waits, within the hold, for the coordinator to promote a
// replica through the normal path (its event follows the commit of the
// new primary).
func (dr *drill) awaitPromotion(since time.Time) {
	deadline := time.Now().Add(dr.hold)
	for time.Now().Before(deadline) {
		if e, ok := dr.m.lastPromotion(dr.k); ok && e.Time.After(since) {
			dr.rep.HookOutput = e.Reason
			dr.step("coordinator promoted %s", e.To)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	dr.rep.Failures = append(dr.rep.Failures, "no replica was promoted within the hold")
}

// measure holds the failure and reports each backend's rate and share
// before and during it.
func (dr *drill) measure(ctx context.Context) {
	c2, t2, _ := dr.m.counters(dr.v.VIP)
	select {
	case <-ctx.Done():
	case <-time.After(dr.hold):
	}
	c3, t3, _ := dr.m.counters(dr.v.VIP)
	after := dr.m.backendStates(dr.v.VIP)
	dr.step("held for %v", t3.Sub(t2).Round(time.Millisecond))
	c0, c1 := dr.c0, dr.c1
	var baseTotal, holdTotal float64
	for _, b := range dr.v.Backends {
		baseTotal += float64(c1[b.Addr] - c0[b.Addr])
		holdTotal += float64(c3[b.Addr] - c2[b.Addr])
	}
	dr.rep.OthersHealthy = true
	for _, b := range dr.v.Backends {
		db := api.DrillBackend{Addr: b.Addr, BaselinePPS: float64(c1[b.Addr]-c0[b.Addr]) / dr.t1.Sub(dr.t0).Seconds(),
			DuringPPS: float64(c3[b.Addr]-c2[b.Addr]) / t3.Sub(t2).Seconds(), DuringPackets: c3[b.Addr] - c2[b.Addr],
			StateBefore: dr.before[b.Addr], StateAfter: after[b.Addr]}
		if baseTotal > 0 {
			db.BaselineShare = float64(c1[b.Addr]-c0[b.Addr]) / baseTotal
		}
		if holdTotal > 0 {
			db.DuringShare = float64(c3[b.Addr]-c2[b.Addr]) / holdTotal
		}
		if b.Addr != dr.target && dr.before[b.Addr] == string(health.Up) && after[b.Addr] != string(health.Up) {
			dr.rep.OthersHealthy = false
		}
		dr.rep.Backends = append(dr.rep.Backends, db)
	}
	sort.Slice(dr.rep.Backends, func(i, j int) bool { return dr.rep.Backends[i].Addr < dr.rep.Backends[j].Addr })
}

// restore puts the original state back: the target enabled again, and
// the original primary promoted back (the epoch rises).
func (dr *drill) restore(ctx context.Context) {
	switch dr.req.Action {
	case "disable-backend", "fail-primary":
		if err := dr.setDisabled(ctx, "drill: restore "+dr.target, false); err != nil {
			dr.rep.NotRestored = append(dr.rep.NotRestored, fmt.Sprintf("%s still disabled: %v", dr.target, err))
		}
	}
	if orig := dr.v.Primary; orig != "" {
		deadline := time.Now().Add(10 * time.Second)
		for {
			s := dr.m.o.Core.State()
			cur := s.VIPs[s.FindVIP(dr.k)].Primary
			if cur == orig {
				break
			}
			if _, err := dr.m.Promote(ctx, dr.v.VIP, orig); err == nil {
				continue
			} else if time.Now().After(deadline) {
				dr.rep.NotRestored = append(dr.rep.NotRestored, fmt.Sprintf("primary is %s, was %s: %v", cur, orig, err))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	dr.step("original state restored")
}

// finish judges the drill, counts and logs it, and keeps its report.
func (dr *drill) finish() {
	m, rep := dr.m, &dr.rep
	rep.Finished = time.Now()
	if time.Duration(rep.ApplySeconds*float64(time.Second)) > dr.maxApply {
		rep.Failures = append(rep.Failures, fmt.Sprintf("apply took %v, more than max_apply %v",
			time.Duration(rep.ApplySeconds*float64(time.Second)).Round(time.Microsecond), dr.maxApply))
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
	m.drills.WithLabelValues(result).Inc()
	m.o.Event(api.Event{Kind: "drill", VIP: dr.v.VIP, Backend: dr.target, Reason: fmt.Sprintf("drill %s finished: %s %s", dr.req.Action, result, strings.Join(rep.Failures, "; "))})
	if err := os.MkdirAll(m.drillDir(), 0o700); err == nil {
		raw, _ := json.MarshalIndent(rep, "", "  ")
		if err := state.WriteFileAtomic(filepath.Join(m.drillDir(), rep.ID+".json"), raw, 0o600); err != nil {
			m.o.Log.Error("keep drill report", "err", err)
		}
	}
}

// appliedSince splits the time since start of the last change into
// commit (start -> committed) and apply (committed -> maps written).
func (m *Manager) appliedSince(start time.Time) (float64, float64) {
	committed, applied := m.o.Core.Timing()
	if committed.Before(start) || applied.Before(committed) {
		return time.Since(start).Seconds(), 0
	}
	return committed.Sub(start).Seconds(), applied.Sub(committed).Seconds()
}

// lastPromotion is VIP k's last promotion's event.
func (m *Manager) lastPromotion(k state.VIPKey) (api.Event, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.promoted[k]
	return e, ok
}

// Drills lists kept drill reports, oldest first.
func (m *Manager) Drills() ([]api.DrillReport, error) {
	ents, err := os.ReadDir(m.drillDir())
	if errors.Is(err, os.ErrNotExist) {
		return []api.DrillReport{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []api.DrillReport{}
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(m.drillDir(), e.Name()))
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
