; The boot sector of the NBD boot test (tests/nbd.rs assembles it with nasm at test time).
;
; It sets up COM1, reads one sector at LBA 122880 of the boot drive with the INT 13h extensions
; (AH=42h), prints that sector's text (up to its first zero byte) to the serial port, and ends
; qemu through its isa-debug-exit device (iobase 0xf4): qemu exits with (0x10 << 1) | 1 = 33.
; A failed read prints BULWARK-BOOT-FAIL and exits with (0x11 << 1) | 1 = 35.

bits 16
org 0x7c00

COM1        equ 0x3f8
DEBUG_EXIT  equ 0xf4
BUFFER      equ 0x8000

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    mov [drive], dl             ; the BIOS passes the boot drive in DL

    ; COM1: no interrupts, 115200 baud (divisor 1), 8N1, FIFO on.
    mov dx, COM1 + 1
    xor al, al
    out dx, al
    mov dx, COM1 + 3
    mov al, 0x80                ; DLAB on: the next two ports set the divisor
    out dx, al
    mov dx, COM1
    mov al, 1
    out dx, al
    mov dx, COM1 + 1
    xor al, al
    out dx, al
    mov dx, COM1 + 3
    mov al, 0x03                ; DLAB off, 8 data bits, no parity, 1 stop bit
    out dx, al
    mov dx, COM1 + 2
    mov al, 0xc7
    out dx, al
    mov dx, COM1 + 4
    mov al, 0x03
    out dx, al

    mov si, dap
    mov ah, 0x42
    mov dl, [drive]
    int 0x13
    jc fail

    mov si, BUFFER
    mov cx, 512
.print:
    lodsb
    test al, al
    jz .done
    call putc
    loop .print
.done:
    mov al, 13
    call putc
    mov al, 10
    call putc
    mov al, 0x10
    jmp exit

fail:
    mov si, failed
.next:
    lodsb
    test al, al
    jz .out
    call putc
    jmp .next
.out:
    mov al, 0x11

exit:
    mov dx, DEBUG_EXIT
    out dx, al
.halt:
    hlt
    jmp .halt

; Sends AL to COM1 once the transmitter holds nothing.
putc:
    push ax
    mov dx, COM1 + 5
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop ax
    mov dx, COM1
    out dx, al
    ret

drive:  db 0
failed: db "BULWARK-BOOT-FAIL", 13, 10, 0

align 4
dap:                            ; disk address packet
    db 0x10, 0                  ; its size, reserved
    dw 1                        ; sectors to read
    dw BUFFER, 0                ; offset, segment
    dq 122880                   ; first sector (LBA)

times 510 - ($ - $$) db 0
dw 0xaa55
