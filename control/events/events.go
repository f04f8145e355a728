// Package events keeps a daemon's recent events (health transitions,
// changes, promotions, drills) and feeds them to followers.
package events

import (
	"sync"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

// Log keeps the last events and feeds followers.
type Log struct {
	mu   sync.Mutex
	buf  []api.Event
	max  int
	subs map[chan api.Event]struct{}
}

// New makes a log that keeps up to max events.
func New(max int) *Log {
	return &Log{max: max, subs: map[chan api.Event]struct{}{}}
}

// Add records an event and hands it to followers (dropping it for a
// follower too slow to take it).
func (l *Log) Add(e api.Event) {
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
func (l *Log) List() []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]api.Event(nil), l.buf...)
}

// Follow subscribes to new events; call the returned func to stop.
func (l *Log) Follow() (<-chan api.Event, func()) {
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
