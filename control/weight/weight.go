// Package weight decides each backend's effective weight, the share of
// new flows its VIP's ring gives it: the configured weight scaled by what
// the backend's agent reports, by its load metric and by slow start. It
// also bounds how often a ring follows those changes, and an agent's
// drain, down or maint (after rise or fall answers in a row): at most one
// reweight per VIP per interval, and for weights only a move of at least
// the threshold. Established flows are not its business: the connection
// table keeps them on their backend.
package weight

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/health"
)

// Defaults of the reweight bound.
const (
	DefaultInterval  = 500 * time.Millisecond
	DefaultThreshold = 0.05
	// SlowStartFrom is the share of its weight a backend starts slow
	// start with.
	SlowStartFrom = 10
)

// Key names one backend of one VIP.
type Key struct{ VIP, Addr string }

// Spec is what the engine needs of one backend.
type Spec struct {
	Key
	// Active: administratively usable (not drained, disabled or of
	// weight 0). A backend becoming active starts slow start.
	Active     bool
	Agent      *health.Agent // nil: no agent check
	AgentEvery time.Duration
	Load       *health.LoadMetric // nil: no load metric
	LoadEvery  time.Duration
	LoadTarget float64
	Timeout    time.Duration // per agent query or scrape
	SlowStart  time.Duration
	// Rise and Fall are how many answers in a row an agent state needs
	// before it moves the backend back in (rise) or out (fall): the
	// health check's (0 counts as 1).
	Rise, Fall int
}

// Verdict is a backend's state beyond its health checks.
type Verdict struct {
	// Percent is the share of its configured weight the ring uses, 1–100.
	Percent int
	Drain   bool   // agent: drain or 0%: no new flows, tracked flows kept
	Down    bool   // agent: down or maint: out
	Reason  string // why Percent < 100, or why drained or down
	Agent   string // the last agent answer, or why there was none
	Load    string // the last load value, or why there was none
}

// Change is one backend's reweight.
type Change struct {
	Key
	From, To int
	Reason   string
}

// StateChange is an agent moving a backend in (Why "") or out.
type StateChange struct {
	Key
	Why string
}

// agentState is what an agent's answers say of new flows: in, or out
// for why (down and maint take the backend out, drain keeps its flows).
type agentState struct {
	in, down bool
	why      string
}

// Options configure an engine.
type Options struct {
	Interval  time.Duration // at most one reweight per VIP per interval (0: DefaultInterval)
	Threshold float64       // a reweight needs a move of this fraction (0: DefaultThreshold)
	// OnReweight is called, without the engine's lock, once per
	// interval at most, with the backends whose weights moved and those
	// an agent moved in or out (drain, down, maint, up, ready: after rise
	// or fall answers in a row, within the same bound as weights).
	OnReweight func([]Change, []StateChange)
	// OnAnswer counts each agent answer and scrape: probe "agent" or
	// "load", result "ok", "malformed" or "failed".
	OnAnswer func(k Key, probe, result string)
}

// Engine keeps every backend's inputs and the weights its ring uses.
type Engine struct {
	opts Options

	mu     sync.Mutex
	ctx    context.Context
	bes    map[Key]*backend
	vips   map[string][]Key // in the order of the specs
	synced bool
	wg     sync.WaitGroup
}

type backend struct {
	spec      Spec
	agentStop context.CancelFunc
	loadStop  context.CancelFunc
	report    health.AgentReport // fields persist until an answer changes them
	agentMsg  string
	load      float64
	haveLoad  bool
	loadMsg   string
	// agent is the agent state applied; pending the one the answers
	// say, and pendN how many in a row said it.
	agent       agentState
	pending     agentState
	pendN       int
	activeSince time.Time // when it last became active (zero: since the start)
	agentSince  time.Time // when the agent last let it back in
	upSince     time.Time // when its health check last moved it up, as Verdict was told
	applied     int       // the percent the ring uses
	why         string    // why applied is what it is ("" at full weight)
	appliedAt   time.Time
}

// New returns an engine; Run starts its reweight loop.
func New(opts Options) *Engine {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.Threshold <= 0 {
		opts.Threshold = DefaultThreshold
	}
	return &Engine{opts: opts, ctx: context.Background(), bes: map[Key]*backend{}, vips: map[string][]Key{}}
}

// Run reweights every interval until ctx ends, then stops every poller.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			e.stop()
			return
		case now := <-t.C:
			if ch, st := e.reweight(now); len(ch)+len(st) > 0 && e.opts.OnReweight != nil {
				e.opts.OnReweight(ch, st)
			}
		}
	}
}

// stop cancels every poller and waits for them.
func (e *Engine) stop() {
	e.mu.Lock()
	for _, b := range e.bes {
		b.cancel()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

func (b *backend) cancel() {
	if b.agentStop != nil {
		b.agentStop()
	}
	if b.loadStop != nil {
		b.loadStop()
	}
}

// Sync makes the engine's backends exactly specs, starting and stopping
// pollers; ctx bounds the pollers it starts. A backend that is new after
// the first Sync, or that became active, starts slow start.
func (e *Engine) Sync(ctx context.Context, specs []Spec) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	want := map[Key]bool{}
	e.vips = map[string][]Key{}
	for _, s := range specs {
		want[s.Key] = true
		e.vips[s.VIP] = append(e.vips[s.VIP], s.Key)
		b, ok := e.bes[s.Key]
		if !ok {
			b = &backend{applied: 100, report: health.AgentReport{Weight: -1}, agent: agentState{in: true}}
			if e.synced && s.Active {
				b.activeSince = now // added
			}
			e.bes[s.Key] = b
		} else if s.Active && !b.spec.Active {
			b.activeSince = now // undrained or enabled
		}
		e.repoll(ctx, b, s)
		b.spec = s
	}
	for k, b := range e.bes {
		if !want[k] {
			b.cancel()
			delete(e.bes, k)
		}
	}
	e.synced = true
}

// repoll restarts b's pollers whose settings differ in s (under e.mu).
func (e *Engine) repoll(ctx context.Context, b *backend, s Spec) {
	old := b.spec
	if b.agentStop == nil || !sameAgent(old, s) {
		if b.agentStop != nil {
			b.agentStop()
			b.agentStop, b.report, b.agentMsg = nil, health.AgentReport{Weight: -1}, ""
			b.pendN = 0
			b.pending = agentState{in: true}
			if s.Agent == nil {
				b.agent = agentState{in: true} // no agent: nothing holds it out
			}
		}
		if s.Agent != nil {
			b.agentStop = e.poll(ctx, s.AgentEvery, func(ctx context.Context) { e.askAgent(ctx, s) })
		}
	}
	if b.loadStop == nil || !sameLoad(old, s) {
		if b.loadStop != nil {
			b.loadStop()
			b.loadStop, b.haveLoad, b.loadMsg = nil, false, ""
		}
		if s.Load != nil {
			b.loadStop = e.poll(ctx, s.LoadEvery, func(ctx context.Context) { e.scrape(ctx, s) })
		}
	}
}

func sameAgent(a, b Spec) bool {
	if (a.Agent == nil) != (b.Agent == nil) {
		return false
	}
	return a.Agent == nil || (a.Agent.Addr == b.Agent.Addr && a.Agent.Send == b.Agent.Send &&
		a.AgentEvery == b.AgentEvery && a.Timeout == b.Timeout)
}

func sameLoad(a, b Spec) bool {
	if (a.Load == nil) != (b.Load == nil) {
		return false
	}
	return a.Load == nil || (a.Load.String() == b.Load.String() && a.LoadEvery == b.LoadEvery && a.Timeout == b.Timeout)
}

// poll runs fn every interval (the first after a random part of one, so
// that many backends do not fire together) until the returned cancel.
func (e *Engine) poll(ctx context.Context, every time.Duration, fn func(context.Context)) context.CancelFunc {
	ctx, cancel := context.WithCancel(ctx)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		t := time.NewTimer(rand.N(every) + time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			start := time.Now()
			fn(ctx)
			t.Reset(max(0, every-time.Since(start)))
		}
	}()
	return cancel
}

// askAgent queries s's agent once and applies a valid answer; a
// malformed one is counted and changes nothing.
func (e *Engine) askAgent(ctx context.Context, s Spec) {
	rep, err := s.Agent.Query(ctx, s.Timeout)
	if ctx.Err() != nil {
		return
	}
	result := "ok"
	e.mu.Lock()
	b, ok := e.bes[s.Key]
	if !ok || !sameAgent(b.spec, s) {
		e.mu.Unlock()
		return
	}
	switch {
	case err == nil:
		b.merge(rep)
		b.agentMsg = fmt.Sprintf("%q", rep.String())
		b.note(b.answered())
	case errors.Is(err, health.ErrAgentAnswer):
		result, b.agentMsg = "malformed", "refused: "+err.Error()
	default:
		// As HAProxy's: an agent that does not answer changes nothing;
		// the health check is what says whether the backend is there.
		result, b.agentMsg = "failed", err.Error()
	}
	e.mu.Unlock()
	if e.opts.OnAnswer != nil {
		e.opts.OnAnswer(s.Key, "agent", result)
	}
}

// note counts one answer's agent state towards moving the applied one.
func (b *backend) note(st agentState) {
	if st == b.agent {
		b.pendN = 0
		return
	}
	if st != b.pending {
		b.pending, b.pendN = st, 0
	}
	b.pendN++
}

// settled reports whether the pending agent state has had its rise
// (back in) or fall (out) answers in a row.
func (b *backend) settled() bool {
	need := b.spec.Fall
	if b.pending.in {
		need = b.spec.Rise
	}
	return b.pending != b.agent && b.pendN >= max(need, 1)
}

// merge applies an answer: each field it names replaces the last one.
func (b *backend) merge(r health.AgentReport) {
	if r.Weight >= 0 {
		b.report.Weight = r.Weight
	}
	if r.Op != "" {
		b.report.Op = r.Op
	}
	if r.Admin != "" {
		b.report.Admin = r.Admin
	}
	b.report.Desc = r.Desc
}

// answered is the agent state the answers so far say ("agent: down",
// "agent: drain", …).
func (b *backend) answered() agentState {
	r := b.report
	st := agentState{}
	switch {
	case r.Op == health.AgentDown:
		st.why, st.down = "agent: down", true
	case r.Admin == health.AgentMaint:
		st.why, st.down = "agent: maint", true
	case r.Admin == health.AgentDrain:
		st.why = "agent: drain"
	case r.Weight == 0:
		st.why = "agent: 0% (drain)"
	default:
		return agentState{in: true}
	}
	if r.Desc != "" {
		st.why += " (" + r.Desc + ")"
	}
	return st
}

// scrape reads s's load metric once.
func (e *Engine) scrape(ctx context.Context, s Spec) {
	v, err := s.Load.Query(ctx, s.Timeout)
	if ctx.Err() != nil {
		return
	}
	result := "ok"
	e.mu.Lock()
	if b, ok := e.bes[s.Key]; ok && sameLoad(b.spec, s) {
		if err != nil {
			// A page that cannot be read says nothing about the load:
			// the backend goes back to full weight until one can.
			result, b.haveLoad, b.loadMsg = "failed", false, err.Error()
		} else {
			b.load, b.haveLoad, b.loadMsg = v, true, fmt.Sprintf("%g (target %g)", v, s.LoadTarget)
		}
	}
	e.mu.Unlock()
	if e.opts.OnAnswer != nil {
		e.opts.OnAnswer(s.Key, "load", result)
	}
}

// Verdict is backend k's state for the ring: the weight last applied
// and why. upSince is when its health check last moved it up (zero if it
// was up from the start); a backend whose slow start began after its
// applied weight was set gets its slow start weight at once, not at the
// next reweight. The reconciler asks for every backend on every apply,
// so only that case computes the VIP's targets.
func (e *Engine) Verdict(k Key, upSince time.Time) Verdict {
	e.mu.Lock()
	defer e.mu.Unlock()
	b, ok := e.bes[k]
	if !ok {
		return Verdict{Percent: 100}
	}
	b.upSince = upSince
	if b.rampStart().After(b.appliedAt) {
		now := time.Now()
		t := e.targets(k.VIP, now)[k]
		b.applied, b.why, b.appliedAt = t.pct, t.why, now
	}
	v := Verdict{Percent: b.applied, Agent: b.agentMsg, Load: b.loadMsg}
	if !b.agent.in {
		v.Reason, v.Down, v.Drain = b.agent.why, b.agent.down, !b.agent.down
		return v
	}
	v.Reason = b.why
	return v
}

// rampStart is when b last became usable: added, enabled, undrained,
// recovered, or let back in by its agent.
func (b *backend) rampStart() time.Time {
	t := b.activeSince
	for _, u := range []time.Time{b.upSince, b.agentSince} {
		if u.After(t) {
			t = u
		}
	}
	return t
}

type target struct {
	pct int
	why string
}

// targets computes the weight every backend of vip should have now.
// Slow start and the agent's weight scale a backend's own weight; a
// backend over its load target then has its share of new flows cut in
// proportion (target/value), and the backends under target share what
// it gave up.
func (e *Engine) targets(vip string, now time.Time) map[Key]target {
	type in struct {
		k     Key
		base  float64 // own factor: agent × slow start
		r     float64 // load factor (1: at or under target)
		whys  []string
		share float64
	}
	var ins []*in
	var total float64
	for _, k := range e.vips[vip] {
		b := e.bes[k]
		x := &in{k: k, base: 1, r: 1}
		if w := b.report.Weight; w > 0 && w < 100 {
			x.base, x.whys = float64(w)/100, append(x.whys, fmt.Sprintf("agent: %d%%", w))
		}
		if d := b.spec.SlowStart; d > 0 {
			if start := b.rampStart(); !start.IsZero() && now.Sub(start) < d {
				f := (SlowStartFrom + (100-SlowStartFrom)*float64(now.Sub(start))/float64(d)) / 100
				x.base *= f
				x.whys = append(x.whys, fmt.Sprintf("slow start: %v of %v", now.Sub(start).Round(100*time.Millisecond), d))
			}
		}
		if b.haveLoad && b.spec.LoadTarget > 0 && b.load > b.spec.LoadTarget {
			x.r = b.spec.LoadTarget / b.load
			x.whys = append(x.whys, fmt.Sprintf("load %g over target %g: share ×%.2f", b.load, b.spec.LoadTarget, x.r))
		}
		if b.agent.in && b.spec.Active {
			x.share = x.base
			total += x.base
		}
		ins = append(ins, x)
	}
	// Shares of the backends that take new flows; the loaded ones keep
	// r of theirs, the others are scaled up by f to fill the rest.
	var kept, loaded, maxR float64
	for _, x := range ins {
		if x.share == 0 || total == 0 {
			continue
		}
		x.share /= total
		maxR = max(maxR, x.r)
		if x.r < 1 {
			kept, loaded = kept+x.r*x.share, loaded+x.share
		}
	}
	f := 1.0
	if loaded > 0 && loaded < 1-1e-9 {
		f = (1 - kept) / (1 - loaded)
	} else if loaded > 0 && maxR > 0 {
		f = maxR // every one is loaded: only their ratios matter
	}
	out := map[Key]target{}
	for _, x := range ins {
		p := x.base * 100
		if x.r < 1 {
			p = x.base * x.r / f * 100
		}
		out[x.k] = target{min(100, max(1, int(math.Round(p)))), strings.Join(x.whys, "; ")}
	}
	return out
}

// reweight applies, for every VIP, the agent states that settled, and
// moves the applied weights where one did or where some backend's target
// moved by the threshold or more since the last reweight; the others
// keep theirs, so a noisy input changes no ring.
func (e *Engine) reweight(now time.Time) ([]Change, []StateChange) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Change
	var states []StateChange
	for vip, keys := range e.vips {
		moved := false
		for _, k := range keys {
			if b := e.bes[k]; b.settled() {
				if b.pending.in {
					b.agentSince = now
				}
				b.agent, b.pendN = b.pending, 0
				states = append(states, StateChange{Key: k, Why: b.agent.why})
				moved = true
			}
		}
		t := e.targets(vip, now)
		for _, k := range keys {
			b := e.bes[k]
			// Back to full weight is always worth a rebuild: the
			// end of a ramp must not stay a few points short of it.
			if d := math.Abs(float64(t[k].pct - b.applied)); d > 0 && (d >= e.opts.Threshold*float64(b.applied) || t[k].pct == 100) {
				moved = true
			}
		}
		if !moved {
			continue
		}
		for _, k := range keys {
			b := e.bes[k]
			if t[k].pct != b.applied {
				out = append(out, Change{Key: k, From: b.applied, To: t[k].pct, Reason: t[k].why})
			}
			b.applied, b.why, b.appliedAt = t[k].pct, t[k].why, now
		}
	}
	return out, states
}
