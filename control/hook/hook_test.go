package hook

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicelb/sluice/testenv/testutil"
)

var ev = Event{Action: Promote, VIP: "10.0.0.100:80/tcp", OldPrimary: "10.0.0.11", NewPrimary: "10.0.0.12", Epoch: 7, Node: "lb1"}

// pidFrom reads the pid a hook wrote, and kills it when the test ends.
func pidFrom(t *testing.T, path string) int {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// alive reports whether pid runs (a zombie waiting for its reaper does not).
func alive(pid int) bool {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// TestChildHoldingOutput: a hook that exits 0 but leaves a child holding
// its output (`sleep 300 & exit 0`) succeeds at once, not after its
// timeout or the child's end.
func TestChildHoldingOutput(t *testing.T) {
	pidf := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	out, err := Hook{Cmd: "sleep 300 & echo $! > " + pidf + "; echo promoted; exit 0", Timeout: 5 * time.Second}.Run(context.Background(), ev)
	took := time.Since(start)
	pidFrom(t, pidf)
	if err != nil || !strings.Contains(out, "promoted") {
		t.Fatalf("hook: %q, %v", out, err)
	}
	if took > 2*waitDelay+time.Second {
		t.Fatalf("took %v: the child held the hook", took)
	}
}

// TestTimeoutKillsTheGroup: at the timeout the hook fails and every
// process it started is killed, not only the shell.
func TestTimeoutKillsTheGroup(t *testing.T) {
	pidf := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	_, err := Hook{Cmd: "sleep 300 & echo $! > " + pidf + "; sleep 300", Timeout: 300 * time.Millisecond}.Run(context.Background(), ev)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("err %v, want a timeout", err)
	}
	if took > 300*time.Millisecond+2*waitDelay+time.Second {
		t.Fatalf("took %v for a 300ms timeout", took)
	}
	pid := pidFrom(t, pidf)
	deadline := time.Now().Add(2 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the hook's background child %d survived its timeout", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOutputIsCapped: a hook that writes without end keeps MaxOutput bytes.
func TestOutputIsCapped(t *testing.T) {
	out, err := Hook{Cmd: "head -c 1000000 /dev/zero | tr '\\0' x", Timeout: 5 * time.Second}.Run(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "x"); n != MaxOutput || !strings.HasSuffix(out, "[output cut at 65536 bytes]") {
		t.Fatalf("kept %d bytes of output, want %d and a note", n, MaxOutput)
	}
}

// TestCommandIsToldTheAction: SLUICE_ACTION says promote or demote, with
// the rest of the event.
func TestCommandIsToldTheAction(t *testing.T) {
	for _, a := range []Action{Promote, Demote} {
		e := ev
		e.Action = a
		out, err := Hook{Cmd: `echo "$SLUICE_ACTION $SLUICE_VIP $SLUICE_OLD_PRIMARY $SLUICE_NEW_PRIMARY $SLUICE_EPOCH $SLUICE_NODE"`, Timeout: 5 * time.Second}.Run(context.Background(), e)
		want := string(a) + " 10.0.0.100:80/tcp 10.0.0.11 10.0.0.12 7 lb1\n"
		if err != nil || out != want {
			t.Fatalf("%s: %q %v, want %q", a, out, err, want)
		}
	}
}

// TestURLHook: the URL is told the action; a 2xx is success, and a
// redirect is a failure, not followed.
func TestURLHook(t *testing.T) {
	var got []Event
	followed := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed = true
			return
		}
		var e Event
		if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
			t.Errorf("body: %v", err)
		}
		got = append(got, e)
		if r.URL.Path == "/moved" {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}
	}))
	defer srv.Close()
	for _, a := range []Action{Promote, Demote} {
		e := ev
		e.Action = a
		if out, err := (Hook{URL: srv.URL + "/hook", Timeout: 5 * time.Second}).Run(context.Background(), e); err != nil || out != "200 OK" {
			t.Fatalf("%s: %q %v", a, out, err)
		}
	}
	if len(got) != 2 || got[0] != ev || got[1].Action != Demote {
		t.Fatalf("the URL got %+v", got)
	}
	_, err := Hook{URL: srv.URL + "/moved", Timeout: 5 * time.Second}.Run(context.Background(), ev)
	if err == nil || !strings.Contains(err.Error(), "302") || followed {
		t.Fatalf("redirect: %v, followed %v", err, followed)
	}
}

// TestHookRunsAsUser: with a user set, the command runs as that user.
func TestHookRunsAsUser(t *testing.T) {
	testutil.Require(t) // changing user needs root
	nobody, err := LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Hook{Cmd: "id -u", Timeout: 5 * time.Second, User: nobody}.Run(context.Background(), ev)
	if err != nil || strings.TrimSpace(out) != strconv.Itoa(int(nobody.Uid)) {
		t.Fatalf("hook as nobody: %q %v, want uid %d", out, err, nobody.Uid)
	}
	if _, err := LookupUser("no-such-user-here"); err == nil || !strings.Contains(err.Error(), "no-such-user-here") {
		t.Fatalf("an unknown user: %v", err)
	}
}
