// Package failover runs the promotions of failover VIPs (a replica takes
// over from a primary that failed, through the epoch, the hook and the
// commit) and the disaster drills that rehearse them. Its Manager owns
// which promotions run and which old primaries await their demote hook.
package failover

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/control/view"
)

// Core is what promotions and drills need of the daemon's core.
type Core interface {
	State() state.State
	// Change commits and applies a change; Fenced commits it only while
	// this node still coordinates (a cluster's election).
	Change(ctx context.Context, what string, change func(*state.State) error) (state.State, error)
	Fenced(ctx context.Context, what string, change func(*state.State) error) (state.State, error)
	// Look is a view of the committed state under the verdicts of now.
	Look() *view.View
	// Status reads the data plane's counters and the backends' states.
	Status() (api.Status, error)
	// Timing is when the last change was committed and when it reached
	// the maps.
	Timing() (committed, applied time.Time)
}

// Coordination says whether this node may promote (a pair's master, a
// cluster's coordinator, a lone node) and names it to hooks.
type Coordination interface {
	IsCoordinator() bool
	// MayCoordinate refuses promotions and drills where they must not
	// run, saying why.
	MayCoordinate() error
	Node() string
	// Hold vouches for the role while a hook runs: its context ends
	// when the role can no longer be vouched for.
	Hold(ctx context.Context) (context.Context, context.CancelFunc, error)
}

// Options configure a Manager.
type Options struct {
	Core     Core
	Coord    Coordination
	Event    func(api.Event)
	Log      *slog.Logger
	HookUser *syscall.Credential // nil: hooks run as the daemon
	// StateDir keeps drill reports (in drills/).
	StateDir string
}

// Manager runs promotions and drills.
type Manager struct {
	o   Options
	ctx context.Context

	mu            sync.Mutex
	stopped       bool                       // Stop ran: nothing starts again
	wg            sync.WaitGroup             // the promotions and hooks running
	promoting     map[state.VIPKey]bool      // a promotion runs for the VIP
	demotePending map[state.VIPKey]string    // old primary awaiting its demote hook
	promoted      map[state.VIPKey]api.Event // each VIP's last promotion

	promotions *prometheus.CounterVec
	drills     *prometheus.CounterVec
}

// New makes a manager; ctx bounds the promotions it starts by itself.
func New(ctx context.Context, o Options) *Manager {
	m := &Manager{o: o, ctx: ctx, promoting: map[state.VIPKey]bool{}, demotePending: map[state.VIPKey]string{}, promoted: map[state.VIPKey]api.Event{}}
	m.promotions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_promotions_total", Help: "Promotion attempts of failover VIPs by result.",
	}, []string{"vip", "result"})
	m.drills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_drills_total", Help: "Disaster drills run, by result.",
	}, []string{"result"})
	m.drills.WithLabelValues("pass")
	m.drills.WithLabelValues("fail")
	return m
}

// Collectors are the manager's metrics.
func (m *Manager) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.promotions, m.drills}
}

func (m *Manager) drillDir() string { return filepath.Join(m.o.StateDir, "drills") }

// nodeName names this node to hooks, the host name if nothing else does.
func (m *Manager) nodeName() string {
	if n := m.o.Coord.Node(); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// claim marks a promotion of k as running; false if one already is, or
// the manager stopped.
func (m *Manager) claim(k state.VIPKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.promoting[k] || m.stopped {
		return false
	}
	m.promoting[k] = true
	return true
}

// spawn runs fn on a goroutine of its own unless the manager stopped;
// Stop waits for it.
func (m *Manager) spawn(fn func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		fn()
	}()
}

// Stop starts no promotion or hook from now on, and waits for those
// running (their context ends with the daemon's), so that nothing commits
// after the store closes.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *Manager) release(k state.VIPKey) {
	m.mu.Lock()
	delete(m.promoting, k)
	m.mu.Unlock()
}
