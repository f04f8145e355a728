package health

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sluicelb/sluice/control/state"
)

// State is a backend's health state as probes see it.
type State string

// Health states. Draining and disabled are administrative states the
// control plane layers on top.
const (
	Up   State = "up"
	Down State = "down"
)

// Settings time a probe and its state machine.
type Settings struct {
	Interval  time.Duration // between probes in a steady state
	Timeout   time.Duration // per probe
	FastInter time.Duration // between probes while in transition (0: Interval)
	Rise      int           // consecutive passes to become up
	Fall      int           // consecutive failures to become down
	// MarkDown: a hard failure (IsHard: refused, reset, unreachable)
	// marks the backend down at once instead of counting towards Fall,
	// as HAProxy's on-error mark-down does. A timeout still counts one.
	MarkDown bool
}

// Defaults are the model's (HAProxy's): inter 2s, rise 2, fall 3.
var Defaults = Settings{Interval: state.DefaultInterval, Timeout: state.DefaultTimeout, Rise: state.DefaultRise, Fall: state.DefaultFall}

// Check is one probe with its settings; equal Checks run once.
type Check struct {
	Probe    Probe
	Settings Settings
}

// ID identifies a check.
type ID struct {
	Probe    Key
	Settings Settings
}

// ID returns the check's identity.
func (c Check) ID() ID { return ID{c.Probe.Key(), c.Settings} }

// Event is a state transition of a check.
type Event struct {
	Check  ID
	From   State
	To     State
	Time   time.Time
	Reason string
}

// Result is the outcome of one probe run.
type Result struct {
	Check    ID
	Type     Type
	Duration time.Duration
	Err      error
}

// Manager runs checks. Transitions go to OnEvent, every probe result to
// OnResult; both are called from the checks' goroutines.
type Manager struct {
	OnEvent  func(Event)
	OnResult func(Result)

	mu      sync.Mutex
	checks  map[ID]*runner
	stopped bool // Stop ran: no check starts again
	wg      sync.WaitGroup
}

type runner struct {
	check   Check
	cancel  context.CancelFunc
	mu      sync.Mutex
	state   State
	since   time.Time
	reason  string
	decided bool
	changed bool // the state is a transition's, not the initial one
}

// Status is a check's current view.
type Status struct {
	State  State
	Since  time.Time
	Reason string
	// Decided is false until the check has reached a verdict (rise passes
	// or fall failures in a row, or a given state): "down" then only means
	// "not known to be up yet".
	Decided bool
	// Changed: State came from a transition of this check, not from its
	// initial state; Since is then when it moved there.
	Changed bool
}

// Sync makes the running set exactly checks. A new check starts in its
// initial state (initial[id], or Down until rise passes when absent; a
// check of type none is up at once); a running check keeps its state.
func (m *Manager) Sync(ctx context.Context, checks []Check, initial map[ID]State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return // a change racing the shutdown starts nothing Stop would wait for
	}
	if m.checks == nil {
		m.checks = map[ID]*runner{}
	}
	want := map[ID]Check{}
	for _, c := range checks {
		want[c.ID()] = c
	}
	for id, r := range m.checks {
		if _, ok := want[id]; !ok {
			r.cancel()
			delete(m.checks, id)
		}
	}
	for id, c := range want {
		if _, ok := m.checks[id]; ok {
			continue
		}
		st, decided := initial[id]
		if !decided {
			st = Down
		}
		reason := "initial state"
		if c.Probe.Type == None {
			st, reason, decided = Up, "no health check", true
		}
		rctx, cancel := context.WithCancel(ctx)
		r := &runner{check: c, cancel: cancel, state: st, since: time.Now(), reason: reason, decided: decided}
		m.checks[id] = r
		if c.Probe.Type == None {
			continue
		}
		m.wg.Add(1)
		go m.run(rctx, r)
	}
}

// Status reports a check's state.
func (m *Manager) Status(id ID) (Status, bool) {
	m.mu.Lock()
	r, ok := m.checks[id]
	m.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return Status{r.state, r.since, r.reason, r.decided, r.changed}, true
}

// Stop stops every check and waits for them; a later Sync starts none.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	for id, r := range m.checks {
		r.cancel()
		delete(m.checks, id)
	}
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *Manager) run(ctx context.Context, r *runner) {
	defer m.wg.Done()
	s := r.check.Settings
	fast := s.FastInter
	if fast <= 0 {
		fast = s.Interval
	}
	// Staggered start: checks of many backends do not fire together.
	timer := time.NewTimer(rand.N(s.Interval) + time.Millisecond)
	defer timer.Stop()
	passes, fails := 0, 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		err := r.check.Probe.Run(ctx, s.Timeout)
		if ctx.Err() != nil {
			return
		}
		if m.OnResult != nil {
			m.OnResult(Result{Check: r.check.ID(), Type: r.check.Probe.Type, Duration: time.Since(start), Err: err})
		}
		r.mu.Lock()
		from := r.state
		var ev *Event
		if err == nil {
			passes, fails = passes+1, 0
			if r.state == Down && passes >= s.Rise {
				r.state, r.since, r.reason = Up, time.Now(), fmt.Sprintf("%d consecutive checks passed", passes)
			}
		} else {
			fails, passes = fails+1, 0
			r.reason = CleanReason(err.Error())
			hard := s.MarkDown && IsHard(err)
			if hard {
				r.reason += " (a hard error: marked down at once)"
			}
			if r.state == Up && (fails >= s.Fall || hard) {
				r.state, r.since = Down, time.Now()
			}
			if hard {
				fails = max(fails, s.Fall)
			}
		}
		if passes >= s.Rise || fails >= s.Fall {
			r.decided = true // a verdict either way, not just "not up yet"
		}
		if r.state != from {
			r.changed = true
			ev = &Event{Check: r.check.ID(), From: from, To: r.state, Time: r.since, Reason: r.reason}
		}
		transition := (r.state == Up && fails > 0) || (r.state == Down && passes > 0)
		r.mu.Unlock()
		if ev != nil && m.OnEvent != nil {
			m.OnEvent(*ev)
		}
		next := s.Interval
		if transition {
			next = fast
		}
		timer.Reset(max(0, next-time.Since(start)))
	}
}
