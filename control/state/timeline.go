package state

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TimelineEvent records that a subject (a backend of a VIP, or a VIP as a
// whole when Backend is empty) became available or unavailable.
type TimelineEvent struct {
	Time      time.Time `json:"time"`
	VIP       string    `json:"vip"`
	Backend   string    `json:"backend,omitempty"`
	Available bool      `json:"available"`
}

// TimelineLimits bound the availability timeline: events older than
// Retention go, and at most MaxEvents (the newest) are kept.
type TimelineLimits struct {
	Retention time.Duration
	MaxEvents int
}

// Defaults of the timeline's limits: the longest window reported, and
// about 12 MB of state.db.
const (
	DefaultTimelineRetention = 30 * 24 * time.Hour
	DefaultTimelineMax       = 100_000
)

var timelineBucket = []byte("timeline")

// writeCoalesce is how long the writer gathers transitions before it
// writes them.
const writeCoalesce = 20 * time.Millisecond

// timeline is the availability timeline: the whole of it in memory, read
// without touching the file, and written to the file off the caller's
// path, in batches, by a goroutine of its own.
type timeline struct {
	db     *bolt.DB
	mu     sync.Mutex
	events []TimelineEvent // oldest first
	limits TimelineLimits
	// pending are events not written yet; wake tells the writer.
	pending []TimelineEvent
	wake    chan struct{}
	idle    *sync.Cond // signalled when the writer has written all pending
	writing bool
	stop    chan struct{}
	stopped chan struct{}
}

// open loads the stored events and starts the writer.
func (t *timeline) open(db *bolt.DB) error {
	t.db, t.limits = db, TimelineLimits{Retention: DefaultTimelineRetention, MaxEvents: DefaultTimelineMax}
	t.idle = sync.NewCond(&t.mu)
	t.wake, t.stop, t.stopped = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(timelineBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var e TimelineEvent
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("availability timeline: %w", err)
			}
			t.events = append(t.events, e)
			return nil
		})
	})
	if err != nil {
		return err
	}
	go t.writer()
	return nil
}

// SetTimelineLimits bounds the timeline from now on, pruning at once; a
// zero field takes its default.
func (s *BoltStore) SetTimelineLimits(l TimelineLimits) {
	if l.MaxEvents <= 0 {
		l.MaxEvents = DefaultTimelineMax
	}
	if l.Retention <= 0 {
		l.Retention = DefaultTimelineRetention
	}
	t := &s.tl
	t.mu.Lock()
	t.limits = l
	t.events = t.pruned(t.events, time.Now())
	t.mu.Unlock()
	t.kick()
}

// AppendTimeline records availability transitions. It does not wait for
// the disk: the events are written shortly after, in order.
func (s *BoltStore) AppendTimeline(evs []TimelineEvent) error {
	if len(evs) == 0 {
		return nil
	}
	t := &s.tl
	t.mu.Lock()
	t.events = t.pruned(append(t.events, evs...), time.Now())
	t.pending = t.pruned(append(t.pending, evs...), time.Now())
	t.mu.Unlock()
	t.kick()
	return nil
}

// Timeline returns every kept transition, oldest first, from memory.
func (s *BoltStore) Timeline() ([]TimelineEvent, error) {
	s.tl.mu.Lock()
	defer s.tl.mu.Unlock()
	return append([]TimelineEvent(nil), s.tl.events...), nil
}

// FlushTimeline waits until every recorded transition is on disk.
func (s *BoltStore) FlushTimeline() {
	t := &s.tl
	t.mu.Lock()
	for len(t.pending) > 0 || t.writing {
		t.idle.Wait()
	}
	t.mu.Unlock()
}

// pruned drops, from an oldest-first slice, what the limits do not keep.
func (t *timeline) pruned(evs []TimelineEvent, now time.Time) []TimelineEvent {
	drop := max(0, len(evs)-t.limits.MaxEvents)
	if t.limits.Retention > 0 {
		cut := now.Add(-t.limits.Retention)
		for drop < len(evs) && evs[drop].Time.Before(cut) {
			drop++
		}
	}
	// The next append that outgrows the array copies only what is kept.
	return evs[drop:]
}

func (t *timeline) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *timeline) writer() {
	defer close(t.stopped)
	for {
		select {
		case <-t.stop:
			return
		case <-t.wake:
		}
		// Gather what a burst of transitions brings (a flapping backend),
		// so that it costs one transaction, not one each.
		select {
		case <-t.stop:
		case <-time.After(writeCoalesce):
		}
		t.mu.Lock()
		batch, limits := t.pending, t.limits
		t.pending, t.writing = nil, true
		t.mu.Unlock()
		if err := t.write(batch, limits); err != nil {
			fmt.Fprintf(os.Stderr, "sluice: record availability: %v\n", err)
		}
		t.mu.Lock()
		t.writing = false
		t.idle.Broadcast()
		t.mu.Unlock()
	}
}

// write stores a batch in one transaction and prunes the stored events
// to the limits; keys (time, sequence) keep them in time order.
func (t *timeline) write(batch []TimelineEvent, l TimelineLimits) error {
	return t.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(timelineBucket)
		if err != nil {
			return err
		}
		for _, e := range batch {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			key := make([]byte, 16)
			binary.BigEndian.PutUint64(key, uint64(e.Time.UnixNano()))
			binary.BigEndian.PutUint64(key[8:], seq)
			raw, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := b.Put(key, raw); err != nil {
				return err
			}
		}
		excess := b.Stats().KeyN - l.MaxEvents
		cut := uint64(0)
		if l.Retention > 0 {
			cut = uint64(time.Now().Add(-l.Retention).UnixNano())
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil && (excess > 0 || binary.BigEndian.Uint64(k) < cut); k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
			excess--
		}
		return nil
	})
}

// close writes what is pending and stops the writer.
func (t *timeline) close() {
	t.kick()
	t.mu.Lock()
	for len(t.pending) > 0 || t.writing {
		t.kick()
		t.idle.Wait()
	}
	t.mu.Unlock()
	close(t.stop)
	<-t.stopped
}
