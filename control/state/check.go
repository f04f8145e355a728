package state

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// CheckType is a health check's kind (Check.Type).
type CheckType string

// Check types.
const (
	CheckTCP   CheckType = "tcp"
	CheckHTTP  CheckType = "http"
	CheckHTTPS CheckType = "https"
	CheckUDP   CheckType = "udp"
	CheckGRPC  CheckType = "grpc"
	CheckNone  CheckType = "none"
)

// ParseCheckType parses a check type.
func ParseCheckType(s string) (CheckType, error) {
	switch t := CheckType(strings.ToLower(s)); t {
	case CheckTCP, CheckHTTP, CheckHTTPS, CheckUDP, CheckGRPC, CheckNone:
		return t, nil
	}
	return "", fmt.Errorf("check type %q: want tcp, http, https, udp, grpc or none", s)
}

// Defaults of a check's timing: HAProxy's inter 2s, rise 2, fall 3.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = time.Second
	DefaultRise     = 2
	DefaultFall     = 3
)

// validateTiming checks when a check probes and how its state machine
// decides, naming the bad field.
func (c Check) validateTiming() error {
	switch {
	case c.Interval <= 0:
		return refuse("interval", time.Duration(c.Interval), "must be positive")
	case c.Timeout <= 0:
		return refuse("timeout", time.Duration(c.Timeout), "must be positive")
	case c.FastInter < 0:
		return refuse("fastinter", time.Duration(c.FastInter), "must not be negative")
	case c.Rise < 1:
		return refuse("rise", c.Rise, "must be at least 1")
	case c.Fall < 1:
		return refuse("fall", c.Fall, "must be at least 1")
	}
	return nil
}

// ParseCodes validates an expected-status expression: "200", "200,204",
// "200-399" or a mix; "" is the default, 200-399.
func ParseCodes(s string) error {
	_, err := CodesMatch(s, 200)
	return err
}

// CodesMatch reports whether status code is one that spec expects.
func CodesMatch(spec string, code int) (bool, error) {
	if spec == "" {
		spec = "200-399"
	}
	var ok bool
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		var a, b int
		if _, err := fmt.Sscanf(lo, "%d", &a); err != nil || a < 100 || a > 599 {
			return false, fmt.Errorf("check codes %q: %q is not a status code", spec, lo)
		}
		b = a
		if isRange {
			if _, err := fmt.Sscanf(hi, "%d", &b); err != nil || b < a || b > 599 {
				return false, fmt.Errorf("check codes %q: bad range %q", spec, part)
			}
		}
		if code >= a && code <= b {
			ok = true
		}
	}
	return ok, nil
}

// LoadSeries is a load metric (Load.Metric) parsed: one series of a
// Prometheus text endpoint, a metric name with optional equality label
// matchers.
type LoadSeries struct {
	URL    string
	Name   string
	Labels map[string]string
}

// ParseLoadMetric parses URL#SERIES, naming what is wrong:
// http://10.0.0.2:8000/metrics#vllm:num_requests_waiting or
// …#nv_inference_pending_request_count{model="resnet"}.
func ParseLoadMetric(s string) (LoadSeries, error) {
	raw, series, ok := strings.Cut(s, "#")
	if !ok || series == "" {
		return LoadSeries{}, fmt.Errorf("load metric %q: want URL#SERIES, e.g. http://10.0.0.2:8000/metrics#vllm:num_requests_waiting", s)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return LoadSeries{}, fmt.Errorf("load metric %q: %q is not an http(s) URL", s, raw)
	}
	name, sel, hasSel := strings.Cut(series, "{")
	if !model.LegacyValidation.IsValidMetricName(name) {
		return LoadSeries{}, fmt.Errorf("load metric %q: %q is not a metric name", s, name)
	}
	ls := LoadSeries{URL: raw, Name: name}
	if hasSel {
		body, ok := strings.CutSuffix(sel, "}")
		if !ok {
			return LoadSeries{}, fmt.Errorf("load metric %q: label matchers lack their closing }", s)
		}
		if ls.Labels, err = parseMatchers(body); err != nil {
			return LoadSeries{}, fmt.Errorf("load metric %q: %w", s, err)
		}
	}
	return ls, nil
}

// parseMatchers parses `a="x",b="y"` (equality matchers only).
func parseMatchers(s string) (map[string]string, error) {
	out := map[string]string{}
	for s = strings.TrimSpace(s); s != ""; {
		name, rest, ok := strings.Cut(s, "=")
		name = strings.TrimSpace(name)
		if !ok || !model.LegacyValidation.IsValidLabelName(name) {
			return nil, fmt.Errorf("label matcher %q: want name=\"value\"", s)
		}
		rest = strings.TrimSpace(rest)
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return nil, fmt.Errorf("label %s: the value must be a quoted string", name)
		}
		out[name], _ = strconv.Unquote(q)
		s = strings.TrimSpace(rest[len(q):])
		if s, ok = strings.CutPrefix(s, ","); !ok && s != "" {
			return nil, fmt.Errorf("label matchers: want a comma after label %s", name)
		}
		s = strings.TrimSpace(s)
	}
	return out, nil
}
