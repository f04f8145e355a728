package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const vllmPage = `# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 3.0
vllm:num_requests_waiting{model_name="mistral"} 4.0
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="resnet",version="1"} 7
# TYPE req_seconds histogram
req_seconds_bucket{le="+Inf"} 2
req_seconds_sum 1
req_seconds_count 2
`

func TestLoadMetric(t *testing.T) {
	for _, c := range []struct {
		spec string
		want float64
		bad  string // part of the error; "" means a value
	}{
		{"http://h:8000/metrics#vllm:num_requests_waiting", 7, ""},
		{`http://h/metrics#vllm:num_requests_waiting{model_name="mistral"}`, 4, ""},
		{`http://h/metrics#nv_inference_pending_request_count{model="resnet", version="1"}`, 7, ""},
		{`http://h/metrics#nv_inference_pending_request_count{model="bert"}`, 0, "no sample"},
		{"http://h/metrics#absent", 0, "no series absent"},
		{"http://h/metrics#req_seconds", 0, "want a gauge"},
		{"http://h/metrics", 0, "want URL#SERIES"},
		{"ftp://h/x#a", 0, "not an http(s) URL"},
		{"http://h/#9lives", 0, "not a metric name"},
		{`http://h/#a{b=c}`, 0, "quoted string"},
		{`http://h/#a{b="c"`, 0, "closing }"},
		{`http://h/#a{b="c" d="e"}`, 0, "want a comma"},
	} {
		m, err := ParseLoadMetric(c.spec)
		var v float64
		if err == nil {
			v, err = m.Value([]byte(vllmPage))
		}
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%s: %v", c.spec, err)
		case c.bad == "" && v != c.want:
			t.Errorf("%s: %g, want %g", c.spec, v, c.want)
		case c.bad != "" && (err == nil || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%s: error %v, want one with %q", c.spec, err, c.bad)
		}
	}
}

func TestLoadMetricQuery(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/moved" {
			http.Redirect(w, r, "/metrics", http.StatusFound)
			return
		}
		if r.URL.Path == "/big" {
			w.Write([]byte(strings.Repeat("#", MaxLoadBody+1)))
			return
		}
		w.Write([]byte(vllmPage))
	})}
	go srv.Serve(l)
	defer srv.Close()
	m, _ := ParseLoadMetric("http://" + l.Addr().String() + "/metrics#vllm:num_requests_waiting")
	if v, err := m.Query(t.Context(), time.Second); err != nil || v != 7 {
		t.Fatalf("query: %v, %v; want 7", v, err)
	}
	m.URL = "http://" + l.Addr().String() + "/big"
	if _, err := m.Query(t.Context(), time.Second); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("a page over the bound: %v, want it refused", err)
	}
	m.URL = "http://" + l.Addr().String() + "/moved"
	if _, err := m.Query(t.Context(), time.Second); err == nil || err.Error() != "load metric: http 302: redirects are not followed" {
		t.Fatalf("a redirect: %v, want it refused, not followed", err)
	}
	l.Close()
	m.URL = "http://" + l.Addr().String() + "/metrics"
	if _, err := m.Query(t.Context(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("closed port: %v, want connection refused", err)
	}
}

func TestAgentQuery(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	answers := make(chan string, 1)
	got := make(chan string, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			n, _ := c.Read(buf)
			got <- string(buf[:n])
			c.Write([]byte(<-answers))
			c.Close()
		}
	}()
	a := Agent{Addr: netip.MustParseAddrPort(l.Addr().String()), Send: "hello\n"}
	for _, c := range []struct {
		answer string
		want   AgentReport
		bad    bool
	}{
		{"75% drain\n", AgentReport{Weight: 75, Admin: AgentDrain}, false},
		{"up", AgentReport{Weight: -1, Op: AgentUp}, false},
		{strings.Repeat("u", MaxAgentAnswer+10), AgentReport{}, true},
		{"bogus\n", AgentReport{}, true},
	} {
		answers <- c.answer
		rep, err := a.Query(context.Background(), time.Second)
		if sent := <-got; sent != "hello\n" {
			t.Errorf("agent got %q, want the agent-send string", sent)
		}
		if c.bad != errors.Is(err, ErrAgentAnswer) || (!c.bad && rep != c.want) {
			t.Errorf("answer %.20q: %+v, %v", c.answer, rep, err)
		}
	}
}

// FuzzLoadPage: a metrics page is the backend's to write; whatever it
// holds, reading a series returns a value or an error, never a panic.
func FuzzLoadPage(f *testing.F) {
	f.Add([]byte(vllmPage), "vllm:num_requests_waiting")
	f.Add([]byte("a{b=\"\\\"\"} 1e308\na{b=\"x\"} 1e308\n"), "a")
	f.Fuzz(func(t *testing.T, page []byte, name string) {
		m, err := ParseLoadMetric("http://h/#" + name)
		if err != nil {
			return
		}
		got, err := m.Value(page)
		// Where the whole page parses, reading only the series' lines
		// gives what the whole page gives.
		full := expfmt.NewTextParser(model.UTF8Validation)
		fams, ferr := full.TextToMetricFamilies(bytes.NewReader(page))
		fam, ok := fams[m.Name]
		if ferr != nil || !ok || len(m.Labels) > 0 {
			return
		}
		sum, n := 0.0, 0
		for _, s := range fam.GetMetric() {
			if v, ok := sampleValue(s); ok {
				sum, n = sum+v, n+1
			}
		}
		if n > 0 && n == len(fam.GetMetric()) && (err != nil || (got != sum && !(math.IsNaN(got) && math.IsNaN(sum)))) {
			t.Fatalf("series %s: %g, %v; the whole page gives %g", m.Name, got, err, sum)
		}
	})
}

// TestLoadPageParsesOnlyTheSeries: a page near the bound, of thousands of
// other families, costs what the wanted series costs, not a parse of the
// whole page (which allocates several times the page).
func TestLoadPageParsesOnlyTheSeries(t *testing.T) {
	var b strings.Builder
	for i := 0; b.Len() < MaxLoadBody-(64<<10); i++ {
		fmt.Fprintf(&b, "# HELP other_%d Something else.\n# TYPE other_%d gauge\nother_%d{model=\"m%d\",le=\"x\"} %d\n", i, i, i, i, i)
	}
	b.WriteString(vllmPage)
	page := []byte(b.String())
	m, _ := ParseLoadMetric("http://h/metrics#vllm:num_requests_waiting")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	v, err := m.Value(page)
	runtime.ReadMemStats(&after)
	if err != nil || v != 7 {
		t.Fatalf("%g, %v; want 7", v, err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 256<<10 {
		t.Fatalf("reading one series of a %d-byte page allocated %d bytes, want at most 256 KiB", len(page), got)
	}
}
