/* Kernel headers use `asm goto` and `asm inline`, which the BPF back end cannot lower. Nothing a
 * probe calls needs them, so, as Datadog's runtime compilation does, turn them into plain asm that
 * would fail loudly if ever emitted. Must be seen before any kernel header. */
#ifndef HIDS_ASM_GOTO_H
#define HIDS_ASM_GOTO_H

#ifndef HIDS_CORE
#include <linux/types.h>
#ifdef asm_volatile_goto
#undef asm_volatile_goto
#endif
#define asm_volatile_goto(x...) asm volatile("invalid use of asm_volatile_goto")
#ifdef asm_goto
#undef asm_goto
#endif
#define asm_goto(x...) asm volatile("invalid use of asm_goto")
#ifdef asm_inline
#undef asm_inline
#endif
#define asm_inline asm
/* Kernel builds pass this for CONFIG_FUNCTION_TRACER; asm/ftrace.h refuses to parse without it. */
#ifndef CC_USING_FENTRY
#define CC_USING_FENTRY
#endif
#endif

#endif
