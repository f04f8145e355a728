package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sluicelb/sluice/control/state"
)

// MaxLoadBody bounds a scraped metrics page. A model server's page is
// tens to hundreds of KiB (vLLM's with its histograms about 100 KiB); a
// larger one is refused, not parsed.
const MaxLoadBody = 4 << 20

// LoadMetric is a backend's load signal: one series of a Prometheus text
// endpoint, written URL#SERIES, SERIES a metric name with optional label
// matchers: http://10.0.0.2:8000/metrics#vllm:num_requests_waiting or
// …#nv_inference_pending_request_count{model="resnet"}. The value is the
// sum over the samples that match (a model server exports one per model).
type LoadMetric struct {
	URL    string
	Name   string
	Labels map[string]string
	Dial   Dialer
}

// ParseLoadMetric parses URL#SERIES with the model's grammar.
func ParseLoadMetric(s string) (LoadMetric, error) {
	ls, err := state.ParseLoadMetric(s)
	if err != nil {
		return LoadMetric{}, err
	}
	return LoadMetric{URL: ls.URL, Name: ls.Name, Labels: ls.Labels}, nil
}

// String writes the metric back as URL#SERIES.
func (l LoadMetric) String() string {
	s := l.URL + "#" + l.Name
	if len(l.Labels) == 0 {
		return s
	}
	keys := make([]string, 0, len(l.Labels))
	for k := range l.Labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.Quote(l.Labels[k])
	}
	return s + "{" + strings.Join(parts, ",") + "}"
}

// Query scrapes the endpoint once within timeout and returns the
// series' value.
func (l LoadMetric) Query(ctx context.Context, timeout time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.URL, nil)
	if err != nil {
		return 0, fmt.Errorf("load metric: %w", err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	tr := &http.Transport{DisableKeepAlives: true}
	if l.Dial != nil {
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) { return l.Dial(ctx, network, addr) }
	}
	defer tr.CloseIdleConnections()
	// A redirect is not followed: the page is the backend's own (its
	// address is the URL's host), as with HTTP checks.
	resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}).Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return 0, fmt.Errorf("load metric: %w", probeError(ctx, err, timeout))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 3 {
		return 0, fmt.Errorf("load metric: http %d: redirects are not followed", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("load metric: http %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxLoadBody+1))
	if err != nil {
		return 0, fmt.Errorf("load metric: read: %w", probeError(ctx, err, timeout))
	}
	if len(body) > MaxLoadBody {
		return 0, fmt.Errorf("load metric: page larger than %d bytes", MaxLoadBody)
	}
	return l.Value(body)
}

// Value reads the series from a page in the Prometheus text format.
// Only the series' own lines are parsed: a model server's page holds
// hundreds of families, histograms among them, and one is wanted.
func (l LoadMetric) Value(page []byte) (float64, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(seriesLines(page, l.Name)))
	if err != nil {
		return 0, fmt.Errorf("load metric: %w", err)
	}
	fam, ok := fams[l.Name]
	if !ok {
		return 0, fmt.Errorf("load metric: no series %s on the page", l.Name)
	}
	sum, n := 0.0, 0
	for _, m := range fam.GetMetric() {
		if !matches(m, l.Labels) {
			continue
		}
		v, ok := sampleValue(m)
		if !ok {
			return 0, fmt.Errorf("load metric: %s is a %s, want a gauge, counter or untyped value", l.Name, fam.GetType())
		}
		sum, n = sum+v, n+1
	}
	if n == 0 {
		return 0, fmt.Errorf("load metric: no sample of %s matches %s", l.Name, l)
	}
	return sum, nil
}

func matches(m *dto.Metric, want map[string]string) bool {
	found := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

func sampleValue(m *dto.Metric) (float64, bool) {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	case m.Untyped != nil:
		return m.Untyped.GetValue(), true
	}
	return 0, false
}

// seriesLines is the lines of page that belong to metric name: its HELP
// and TYPE comments and its samples.
func seriesLines(page []byte, name string) []byte {
	var out []byte
	for len(page) > 0 {
		line, rest, _ := bytes.Cut(page, []byte("\n"))
		page = rest
		body := line
		if c, ok := bytes.CutPrefix(line, []byte("# HELP ")); ok {
			body = c
		} else if c, ok := bytes.CutPrefix(line, []byte("# TYPE ")); ok {
			body = c
		}
		if n, ok := bytes.CutPrefix(body, []byte(name)); ok && ofSeries(n) {
			out = append(append(out, line...), '\n')
		}
	}
	return out
}

// ofSeries reports whether what follows a metric's name on a line makes
// the line the metric's: a space or its labels, after the name or after
// a histogram's or summary's suffix (so that Value can say what the
// series is when it is not a single value).
func ofSeries(after []byte) bool {
	for _, suffix := range []string{"_bucket", "_sum", "_count", "_created"} {
		if a, ok := bytes.CutPrefix(after, []byte(suffix)); ok {
			after = a
			break
		}
	}
	return len(after) > 0 && (after[0] == ' ' || after[0] == '\t' || after[0] == '{')
}
