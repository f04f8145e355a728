package sdnotify

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatchdogPingsOnlyWhileHealthy: pings stop while the daemon is not
// healthy (its checks or its announcer stalled) and resume when it is.
func TestWatchdogPingsOnlyWhileHealthy(t *testing.T) {
	var sick atomic.Bool
	pings := make(chan struct{}, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Watchdog(ctx, 5*time.Millisecond, func() error {
		if sick.Load() {
			return errors.New("stuck")
		}
		return nil
	}, func() { pings <- struct{}{} }, slog.Default())
	count := func(d time.Duration) int {
		n := 0
		end := time.After(d)
		for {
			select {
			case <-pings:
				n++
			case <-end:
				return n
			}
		}
	}
	if n := count(100 * time.Millisecond); n < 5 {
		t.Fatalf("%d pings in 100 ms while healthy", n)
	}
	sick.Store(true)
	count(10 * time.Millisecond) // a ping decided before the change
	if n := count(100 * time.Millisecond); n != 0 {
		t.Fatalf("%d pings while not healthy", n)
	}
	sick.Store(false)
	if n := count(100 * time.Millisecond); n < 5 {
		t.Fatalf("%d pings in 100 ms once healthy again", n)
	}
}

// TestStoppingExtendsTheTimeout: the stop notice carries the daemon's
// bound, as systemd reads it from its notify socket.
func TestStoppingExtendsTheTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	Stopping(16 * time.Second)
	buf := make([]byte, 256)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(buf[:n]), "STOPPING=1\nEXTEND_TIMEOUT_USEC=16000000"; got != want {
		t.Fatalf("notice %q, want %q", got, want)
	}
}
