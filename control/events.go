package control

import (
	"sync"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

// EventLog keeps the last events and feeds followers.
type EventLog struct {
	mu   sync.Mutex
	buf  []api.Event
	max  int
	subs map[chan api.Event]struct{}
}

// NewEventLog keeps up to max events.
func NewEventLog(max int) *EventLog {
	return &EventLog{max: max, subs: map[chan api.Event]struct{}{}}
}

// Add records an event and hands it to followers (dropping it for a
// follower too slow to take it).
func (l *EventLog) Add(e api.Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, e)
	if len(l.buf) > l.max {
		l.buf = l.buf[len(l.buf)-l.max:]
	}
	for c := range l.subs {
		select {
		case c <- e:
		default:
		}
	}
}

// List returns the kept events, oldest first.
func (l *EventLog) List() []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]api.Event(nil), l.buf...)
}

// Follow subscribes to new events; call the returned func to stop.
func (l *EventLog) Follow() (<-chan api.Event, func()) {
	c := make(chan api.Event, 256)
	l.mu.Lock()
	l.subs[c] = struct{}{}
	l.mu.Unlock()
	return c, func() {
		l.mu.Lock()
		delete(l.subs, c)
		l.mu.Unlock()
	}
}
