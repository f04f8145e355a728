package events

import (
	"fmt"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
)

// TestLog: the log keeps the newest max events in order, stamps those
// without a time, feeds followers what comes after they follow, drops
// for a follower that does not keep up instead of blocking, and stops
// feeding one that stopped.
func TestLog(t *testing.T) {
	l := New(3)
	for i := range 5 {
		l.Add(api.Event{Reason: fmt.Sprint(i)})
	}
	got := l.List()
	if len(got) != 3 || got[0].Reason != "2" || got[2].Reason != "4" || got[0].Time.IsZero() {
		t.Fatalf("kept %+v, want events 2, 3, 4 with times", got)
	}
	c, stop := l.Follow()
	at := time.Unix(1, 0)
	l.Add(api.Event{Reason: "5", Time: at})
	if e := <-c; e.Reason != "5" || !e.Time.Equal(at) {
		t.Fatalf("followed %+v", e)
	}
	for i := range 300 { // more than a follower's buffer: Add must not block
		l.Add(api.Event{Reason: fmt.Sprint(i)})
	}
	if n := len(c); n != cap(c) {
		t.Errorf("%d events queued for a slow follower, want its buffer full (%d)", n, cap(c))
	}
	stop()
	for len(c) > 0 {
		<-c
	}
	l.Add(api.Event{Reason: "after"})
	select {
	case e := <-c:
		t.Fatalf("a stopped follower got %+v", e)
	default:
	}
}
