package state

import (
	"errors"
	"fmt"
)

// Kinds of refusal a change can end with. Callers test them with
// errors.Is; the API server maps them to status codes. Anything else a
// change returns is bad input.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// kindError is a message of one kind: it prints as the message alone.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// NotFound is an ErrNotFound with the given message.
func NotFound(format string, args ...any) error {
	return &kindError{ErrNotFound, fmt.Sprintf(format, args...)}
}

// Conflict is an ErrConflict with the given message.
func Conflict(format string, args ...any) error {
	return &kindError{ErrConflict, fmt.Sprintf(format, args...)}
}
