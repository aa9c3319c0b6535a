#include "textflag.h"

// func memoryGrow(pages int32) int32
TEXT ·memoryGrow(SB), NOSPLIT, $0
	Get SP
	I32Load pages+0(FP)
	GrowMemory
	I32Store ret+8(FP)
	RET

// func trap()
TEXT ·trap(SB), NOSPLIT, $0
	UNDEF
