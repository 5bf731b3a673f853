package recon

// The Go ends of the library's callbacks. shim.c's C trampolines receive recon's
// (..., void *user_data) calls and pass user_data on as the integer value of a cgo.Handle,
// which leads back to the state below. A file with //export may only declare in its preamble.

/*
#include <stdint.h>
*/
import "C"

import (
	"context"
	"runtime/cgo"
	"sync"
)

// panicTrap keeps a panic raised inside a callback. A panic must not unwind through the
// library's frames (it would skip recon's own cleanup), so the callback returns normally and
// the panic is raised again once the library call has returned.
type panicTrap struct {
	mu     sync.Mutex
	caught bool
	value  interface{}
}

func (p *panicTrap) keep(value interface{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.caught {
		p.caught, p.value = true, value
	}
}

// pending reports whether a panic is kept (nil-safe).
func (p *panicTrap) pending() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.caught
}

// rethrow panics with the kept value, if any (nil-safe).
func (p *panicTrap) rethrow() {
	if p == nil {
		return
	}
	p.mu.Lock()
	caught, value := p.caught, p.value
	p.caught, p.value = false, nil
	p.mu.Unlock()
	if caught {
		panic(value)
	}
}

// logState is LoadOptions.Log for the library's log callback, kept for the model's lifetime.
type logState struct {
	panicTrap
	fn func(LogLevel, string)
}

// progressState serves one Run: the user's callback and the run's context.
type progressState struct {
	panicTrap
	ctx context.Context
	fn  func(Progress) bool
}

//export reconGoLog
func reconGoLog(handle C.uintptr_t, level C.int32_t, message *C.char) {
	s := cgo.Handle(handle).Value().(*logState)
	returned := false
	defer func() {
		if !returned {
			s.keep(recover())
		}
	}()
	s.fn(LogLevel(level), C.GoString(message))
	returned = true
}

// reconGoProgress returns 1 to go on, 0 to stop the run. It stops it when the run's context
// has ended: recon_cancel, sent by Run's watcher, is dropped when it arrives before the run
// has started, and this check covers that window.
//
//export reconGoProgress
func reconGoProgress(handle C.uintptr_t, stage C.int32_t, step, total C.uint32_t) (goOn C.int32_t) {
	s := cgo.Handle(handle).Value().(*progressState)
	if s.ctx.Err() != nil {
		return 0
	}
	if s.fn == nil {
		return 1
	}
	returned := false
	defer func() {
		if !returned {
			s.keep(recover())
			goOn = 0
		}
	}()
	ok := s.fn(Progress{Stage: Stage(stage), Step: int(step), Total: int(total)})
	returned = true
	if ok {
		return 1
	}
	return 0
}
