package control

import (
	"sync"
	"time"
)

// Event is one state transition or change, as `sluice events` shows it.
type Event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"` // health, admin, config, failover
	VIP      string    `json:"vip,omitempty"`
	Backend  string    `json:"backend,omitempty"`
	From     string    `json:"from,omitempty"`
	To       string    `json:"to,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Revision uint64    `json:"revision,omitempty"`
	// Marked is when the first map write for a health verdict completed
	// (the backend flag: the data plane stops or starts using it there);
	// Applied is when every write, rings included, had completed.
	Marked  *time.Time `json:"marked,omitempty"`
	Applied *time.Time `json:"applied,omitempty"`
}

// EventLog keeps the last events and feeds followers.
type EventLog struct {
	mu   sync.Mutex
	buf  []Event
	max  int
	subs map[chan Event]struct{}
}

// NewEventLog keeps up to max events.
func NewEventLog(max int) *EventLog {
	return &EventLog{max: max, subs: map[chan Event]struct{}{}}
}

// Add records an event and hands it to followers (dropping it for a
// follower too slow to take it).
func (l *EventLog) Add(e Event) {
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
func (l *EventLog) List() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.buf...)
}

// Follow subscribes to new events; call the returned func to stop.
func (l *EventLog) Follow() (<-chan Event, func()) {
	c := make(chan Event, 256)
	l.mu.Lock()
	l.subs[c] = struct{}{}
	l.mu.Unlock()
	return c, func() {
		l.mu.Lock()
		delete(l.subs, c)
		l.mu.Unlock()
	}
}
