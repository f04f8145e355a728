package failover

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/hook"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
	"github.com/sluicelb/sluice/health"
)

// runHook runs a VIP's hook for action (its promote or demote command,
// else its URL, told the action), bounded by the VIP's hook timeout.
func (m *Manager) runHook(ctx context.Context, v state.VIP, action hook.Action, old, next string) (string, error) {
	node := m.nodeName()
	h := hook.Hook{Cmd: v.PromoteCmd, URL: v.PromoteURL, Timeout: time.Duration(v.HookTimeout), User: m.o.HookUser}
	if action == hook.Demote {
		h.Cmd = v.DemoteCmd
	}
	return h.Run(ctx, hook.Event{Action: action, VIP: v.VIP, OldPrimary: old, NewPrimary: next, Epoch: v.Epoch, Node: node})
}

// up says whether backend b of VIP k is up in view lk.
func up(lk *view.View, k state.VIPKey, b state.Backend) bool {
	return lk.Of(k, netip.MustParseAddr(b.Addr)).Health.State == health.Up
}

// candidates lists the up backends of a failover VIP that may become
// primary, highest priority first.
func candidates(lk *view.View, v state.VIP, exclude string) []state.Backend {
	k, _ := state.ParseVIPKey(v.VIP)
	var out []state.Backend
	for _, b := range v.Backends {
		if b.Addr == exclude || b.Disabled || !up(lk, k, b) {
			continue
		}
		out = append(out, b)
	}
	slices.SortStableFunc(out, func(a, b state.Backend) int {
		if a.Priority != b.Priority {
			return b.Priority - a.Priority
		}
		return strings.Compare(a.Addr, b.Addr)
	})
	return out
}

// Check starts a promotion for every failover VIP whose primary
// is missing or no longer up, and fails back where asked to. Only the
// coordinator promotes.
func (m *Manager) Check() { m.Decide(nil) }

// Decide is Check on view lk, one an apply has just decided from (nil:
// a view of now).
func (m *Manager) Decide(lk *view.View) {
	if !m.o.Coord.IsCoordinator() {
		return
	}
	if lk == nil {
		lk = m.o.Core.Look()
	}
	for _, v := range lk.State.VIPs {
		if v.Policy != state.PolicyFailover {
			continue
		}
		k, _ := state.ParseVIPKey(v.VIP)
		primaryUp := false
		for _, b := range v.Backends {
			if b.Addr == v.Primary && !b.Disabled && up(lk, k, b) {
				primaryUp = true
			}
		}
		cands := candidates(lk, v, "")
		if primaryUp {
			m.demoteRecovered(lk, v)
			if !v.Failback || len(cands) == 0 || cands[0].Addr == v.Primary {
				continue
			}
			cur := -1
			for _, b := range v.Backends {
				if b.Addr == v.Primary {
					cur = b.Priority
				}
			}
			if cands[0].Priority <= cur {
				continue
			}
		}
		if len(cands) == 0 && v.Primary == "" {
			continue
		}
		if v.Primary == "" && higherUndecided(lk, k, v, cands[0].Priority) {
			// First election: wait until every backend that would outrank
			// the best candidate has been probed, so the highest priority
			// wins rather than the fastest check.
			continue
		}
		m.startPromotion(k, cands)
	}
}

// higherUndecided reports whether a backend of v with a priority above p
// has not been probed yet.
func higherUndecided(lk *view.View, k state.VIPKey, v state.VIP, p int) bool {
	for _, b := range v.Backends {
		if b.Priority <= p || b.Disabled {
			continue
		}
		if in := lk.Of(k, netip.MustParseAddr(b.Addr)); in.Known && !in.Health.Decided {
			return true
		}
	}
	return false
}

// startPromotion runs one promotion of a VIP at a time, off the caller's
// goroutine: hooks may take seconds.
func (m *Manager) startPromotion(k state.VIPKey, cands []state.Backend) {
	if !m.claim(k) {
		return
	}
	m.spawn(func() {
		defer func() {
			m.release(k)
			m.Check() // the world may have moved on meanwhile
		}()
		if _, err := m.promote(m.ctx, k, cands); err != nil {
			m.o.Log.Warn("promotion", "vip", state.FormatVIPKey(k), "err", err)
		}
	})
}

// promote tries the candidates in order: commit the next epoch durably,
// run the hook with it, and switch the data plane to the first candidate
// whose hook succeeds. With none left the VIP has no primary and drops.
func (m *Manager) promote(ctx context.Context, k state.VIPKey, cands []state.Backend) (api.PromoteResult, error) {
	name := state.FormatVIPKey(k)
	var lastErr error
	for _, c := range cands {
		var v state.VIP
		if _, err := m.o.Core.Fenced(ctx, fmt.Sprintf("epoch of %s raised for promoting %s", name, c.Addr), func(s *state.State) error {
			i, err := s.LookupVIP(k)
			if err != nil {
				return err
			}
			s.VIPs[i].Epoch++
			v = s.VIPs[i]
			return nil
		}); err != nil {
			return api.PromoteResult{}, err
		}
		old := v.Primary
		// The epoch was recorded under the election; the hook runs only
		// while it still holds, checked in etcd right before it starts
		// and renewed with a margin while it runs (a cluster's lease can
		// end between).
		hctx, release, err := m.o.Coord.Hold(ctx)
		if err != nil {
			return api.PromoteResult{}, fmt.Errorf("promote %s: no hook after epoch %d: %w", c.Addr, v.Epoch, err)
		}
		start := time.Now()
		out, herr := m.runHook(hctx, v, hook.Promote, old, c.Addr)
		release()
		took := time.Since(start)
		if herr != nil {
			lastErr = herr
			m.o.Event(api.Event{Kind: "failover", VIP: name, Backend: c.Addr, From: old, To: c.Addr,
				Reason: fmt.Sprintf("promotion hook failed (epoch %d, %v): %v: %s", v.Epoch, took.Round(time.Millisecond), herr, strings.TrimSpace(out))})
			m.promotions.WithLabelValues(name, "hook_failed").Inc()
			continue
		}
		if _, err := m.o.Core.Fenced(ctx, fmt.Sprintf("promoted %s to primary of %s (epoch %d)", c.Addr, name, v.Epoch), func(s *state.State) error {
			i, err := s.LookupVIP(k)
			if err != nil {
				return err
			}
			s.VIPs[i].Primary = c.Addr
			return nil
		}); err != nil {
			return api.PromoteResult{}, err
		}
		ev := api.Event{Time: time.Now(), Kind: "failover", VIP: name, Backend: c.Addr, From: old, To: c.Addr,
			Reason: fmt.Sprintf("promoted (epoch %d, hook %v): %s", v.Epoch, took.Round(time.Millisecond), strings.TrimSpace(out))}
		m.o.Event(ev)
		m.promotions.WithLabelValues(name, "promoted").Inc()
		m.mu.Lock()
		if old != "" {
			m.demotePending[k] = old
		}
		m.promoted[k] = ev
		m.mu.Unlock()
		return api.PromoteResult{VIP: name, OldPrimary: old, NewPrimary: c.Addr, Epoch: v.Epoch, HookOutput: out, HookTime: took.String()}, nil
	}
	// Nobody could take over: the VIP has no primary and drops, counted.
	if _, err := m.o.Core.Fenced(ctx, "no primary for "+name, func(s *state.State) error {
		if i := s.FindVIP(k); i >= 0 {
			s.VIPs[i].Primary = ""
		}
		return nil
	}); err != nil {
		return api.PromoteResult{}, err
	}
	reason := "no replica is up"
	if lastErr != nil {
		reason = "every promotion hook failed; last: " + lastErr.Error()
	}
	m.o.Event(api.Event{Kind: "failover", VIP: name, To: "none", Reason: "VIP has no primary, packets are dropped: " + reason})
	m.promotions.WithLabelValues(name, "no_primary").Inc()
	if lastErr == nil {
		return api.PromoteResult{VIP: name}, errors.New(reason)
	}
	return api.PromoteResult{VIP: name}, lastErr
}

// demoteRecovered runs the demote hook once for an old primary that is up
// again and rejoined as a replica.
func (m *Manager) demoteRecovered(lk *view.View, v state.VIP) {
	k, _ := state.ParseVIPKey(v.VIP)
	m.mu.Lock()
	old, ok := m.demotePending[k]
	m.mu.Unlock()
	if !ok || old == v.Primary {
		return
	}
	for _, b := range v.Backends {
		if b.Addr != old || !up(lk, k, b) {
			continue
		}
		m.mu.Lock()
		delete(m.demotePending, k)
		m.mu.Unlock()
		// Off the caller's goroutine: that is a health check's.
		m.spawn(func() {
			hctx, release, err := m.o.Coord.Hold(m.ctx)
			if err != nil {
				m.o.Log.Warn("demote hook not run", "vip", v.VIP, "backend", old, "err", err)
				return
			}
			defer release()
			out, err := m.runHook(hctx, v, hook.Demote, old, v.Primary)
			reason := "rejoined as a replica"
			if v.DemoteCmd != "" {
				reason += fmt.Sprintf("; demote hook: %v %s", err, strings.TrimSpace(out))
			}
			m.o.Event(api.Event{Kind: "failover", VIP: v.VIP, Backend: old, To: "replica", Reason: reason})
		})
	}
}

// Promote is a planned switchover to addr, through the same sequence.
func (m *Manager) Promote(ctx context.Context, vip, addr string) (api.PromoteResult, error) {
	if err := m.o.Coord.MayCoordinate(); err != nil {
		return api.PromoteResult{}, err
	}
	k, a, err := state.ParseBackend(vip, addr)
	if err != nil {
		return api.PromoteResult{}, err
	}
	lk := m.o.Core.Look()
	st := lk.State
	i, err := st.LookupVIP(k)
	if err != nil {
		return api.PromoteResult{}, err
	}
	v := st.VIPs[i]
	if v.Policy != state.PolicyFailover {
		return api.PromoteResult{}, fmt.Errorf("vip %s: policy %s has no primary (it needs policy failover)", v.VIP, v.Policy)
	}
	if v.Primary == a.String() {
		return api.PromoteResult{}, fmt.Errorf("%s is already the primary of %s", a, v.VIP)
	}
	var cand []state.Backend
	for _, b := range candidates(lk, v, "") {
		if b.Addr == a.String() {
			cand = append(cand, b)
		}
	}
	if len(cand) == 0 {
		return api.PromoteResult{}, fmt.Errorf("%s is not an up backend of %s", a, v.VIP)
	}
	if !m.claim(k) {
		return api.PromoteResult{}, state.Conflict("vip %s: a promotion is already running", v.VIP)
	}
	defer m.release(k)
	return m.promote(ctx, k, cand)
}
